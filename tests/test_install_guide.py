"""docs/install.md, followed by a machine: a new Django project, the plugin
installed from its wheel (not from this checkout), the guide's own snippets
pasted where it says, its commands run, and a live widget in Chromium.

Only the addresses of Kafka and Redis are changed, to the test stack's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib

from reco_plugin import keys, strategies
from stack.pipeline import end_offsets, redis_state, totals
from stack.services import REPO, free_port, stop_process
from stack.visitor import ShopVisitor

from .conftest import ARTIFACTS
from .test_browser import CHROMIUM, FOR_YOU, widget_ids

pytestmark = [pytest.mark.stack, pytest.mark.browser]

GUIDE = REPO / "docs" / "install.md"
MARK = re.compile(r"<!-- guide: (?P<what>[^>]*?) -->\n```[a-z]*\n(?P<code>.*?)```", re.S)

# the test's own shop: a product model, a product page (a shop has these already)
MODELS = """
from django.db import models
from django.urls import reverse


class Product(models.Model):
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    category = models.CharField(max_length=50)
    in_stock = models.BooleanField(default=True)

    def get_absolute_url(self):
        return reverse("product_detail", args=[self.pk])


class Order(models.Model):
    user = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL)
    placed = models.DateTimeField()


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE)
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField(default=1)
    unit_price = models.DecimalField(max_digits=8, decimal_places=2)
"""
# the shop's history from before the plugin: ten customers each bought lamp 1
# with one of lamps 14-17 over the last three weeks (the first visitor below
# browses 1-12); bulk_create: the plugin's signals did not see them
ORDERS = """
import datetime as dt
from django.contrib.auth.models import User
from django.utils import timezone
from catalog.models import Order, OrderLine
lines = []
for n in range(10):
    order = Order.objects.create(
        user=User.objects.create(username=f"customer{n}"),
        placed=timezone.now() - dt.timedelta(days=2 * n + 1),
    )
    for product in (1, 14 + n % 4):
        lines.append(OrderLine(order=order, product_id=product, unit_price=10))
OrderLine.objects.bulk_create(lines)
"""
BOUGHT = {"1", "14", "15", "16", "17"}
VIEWS = """
from django.shortcuts import get_object_or_404, render

from .models import Product


def product_detail(request, pk):
    product = get_object_or_404(Product, pk=pk)
    return render(request, "catalog/product_detail.html", {"product": product})
"""
PAGE_HEAD = "<!doctype html>\n<html lang='en'><head><title>{{ product.name }}</title></head>\n<body><h1>{{ product.name }}</h1>\n"


def install_command() -> str:
    """The guide's first ``pip install`` (from a path), as ``pip ...``."""
    section = GUIDE.read_text().split("## 1. Install the package", 1)[1]
    line = next(line for line in section.splitlines() if line.startswith('pip install "/'))
    return line.replace('"', "")


def wait_for_key(
    r, key: str, servers: list, logs: Path, timeout: float = 180, holding=None
) -> None:
    """Until the job has written ``key`` (a list holding one of the products
    ``holding`` if given); fails at once if a server died."""
    deadline = time.monotonic() + timeout

    def written() -> bool:
        raw = r.get(key) if holding else r.exists(key)
        if not holding:
            return bool(raw)
        return bool(raw) and any(str(item["product_id"]) in holding for item in json.loads(raw))

    while not written():
        for n, server in enumerate(servers):
            assert server.poll() is None, (logs / f"serve-{n}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (logs / "serve-0.log").read_text()[-3000:]
        time.sleep(0.5)


def wait_applied(r, offsets: str, ends: dict[str, int], timeout: float = 120) -> None:
    """Until the job has applied every record up to ``ends`` and written the
    lists of its last batch (``offsets``: the shop's key, with its prefix)."""
    deadline = time.monotonic() + timeout
    with prefix(offsets.rpartition(":pipeline:")[0]):
        pending = keys.pipeline_pending()
        while any(int(r.hget(offsets, tp) or 0) < end for tp, end in ends.items() if end) or (
            r.exists(pending) or strategies.lists_owed(r)
        ):
            assert time.monotonic() < deadline, (r.hgetall(offsets), ends, r.get(pending))
            time.sleep(0.3)


def guide_steps() -> list[tuple[str, str]]:
    steps = [(m["what"].strip(), m["code"]) for m in MARK.finditer(GUIDE.read_text())]
    assert steps, "docs/install.md has no marked snippets"
    return steps


def test_the_guides_snippets_are_marked_and_cover_every_file():
    files = {what.rsplit(" ", 1)[0] for what, _ in guide_steps() if what not in ("run", "serve")}
    assert files == {
        "myshop/settings.py",
        "myshop/urls.py",
        "myshop/asgi.py",
        "myshop/celery.py",
        "myshop/__init__.py",
        "catalog/templates/catalog/product_detail.html",
    }


def test_the_settings_reference_lists_every_setting():
    from reco_plugin.conf import DEFAULTS

    text = GUIDE.read_text().split("<!-- settings-reference -->", 1)[1]
    documented = re.findall(r"^\| `([A-Z_]+)` \|", text, re.M)
    assert sorted(documented) == sorted(DEFAULTS)


def adapted(code: str, stack) -> str:
    """The snippet with the test stack's addresses (and databases nobody else reads)."""
    return (
        code.replace("127.0.0.1:9092", f"127.0.0.1:{stack.ports.kafka}")
        .replace("127.0.0.1:6379/1", f"127.0.0.1:{stack.ports.redis}/7")
        .replace("127.0.0.1:6379/2", f"127.0.0.1:{stack.ports.redis}/8")
        .replace("127.0.0.1:6379", f"127.0.0.1:{stack.ports.redis}")
    )


@contextlib.contextmanager
def prefix(name):
    before = keys.PREFIX
    keys.use_prefix(name)
    try:
        yield
    finally:
        keys.use_prefix(before)


def test_a_new_project_follows_the_guide_to_a_live_widget(live_stack, tmp_path):
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    timings: dict[str, float] = {}
    # 1. the guide's own pip install, with its extras, into a fresh virtual
    # environment (the checkout is the path it names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = str(venv / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", *install_command().replace("/path/to/reco-plugin", str(REPO)).split()],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    timings["installed"] = time.monotonic() - started
    project = tmp_path / "shop"
    project.mkdir()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV")
        },
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }

    def run(*argv, check=True):
        result = subprocess.run(
            list(argv), cwd=project, env=env, capture_output=True, text=True, timeout=300
        )
        if check and result.returncode:
            raise AssertionError(f"{argv} failed:\n{result.stdout}\n{result.stderr}")
        return result

    run(python, "-m", "django", "startproject", "myshop", ".")
    run(python, "manage.py", "startapp", "catalog")
    origin = run(
        python,
        "-c",
        "import reco_plugin, spark_jobs; print(reco_plugin.__file__, spark_jobs.__file__)",
    )
    assert all(path.startswith(str(venv)) for path in origin.stdout.split()), origin.stdout
    (project / "catalog" / "models.py").write_text(MODELS)
    (project / "catalog" / "views.py").write_text(VIEWS)
    template = project / "catalog" / "templates" / "catalog" / "product_detail.html"
    template.parent.mkdir(parents=True)
    template.write_text(PAGE_HEAD)
    settings_py = project / "myshop" / "settings.py"
    settings_py.write_text(
        settings_py.read_text().replace(
            "INSTALLED_APPS = [", "INSTALLED_APPS = [\n    'catalog',", 1
        )
    )
    urls_py = project / "myshop" / "urls.py"
    urls_py.write_text(
        urls_py.read_text()
        + "\nfrom catalog import views as catalog_views\n"
        + "urlpatterns += [path('products/<int:pk>/', catalog_views.product_detail, name='product_detail')]\n"
    )

    run(python, "manage.py", "makemigrations", "catalog")

    # 2. the guide, step by step
    servers: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    web_port = free_port()
    try:
        for what, code in guide_steps():
            code = adapted(code, live_stack)
            if what == "run":
                for line in code.strip().splitlines():
                    argv = line.split()
                    if argv[0] == "python":
                        argv[0] = python
                    run(*argv)
                    if argv[2:3] == ["migrate"]:
                        run(
                            python,
                            "manage.py",
                            "shell",
                            "-c",
                            "from catalog.models import Product\n"
                            "for n in range(1, 21): Product.objects.create("
                            "name=f'Lamp {n}', price=10 + n, category='Lamps' if n % 2 else 'Chairs')",
                        )
                        run(python, "manage.py", "shell", "-c", ORDERS)
                    if argv[2:3] == ["reco_import"]:
                        timings["imported"] = time.monotonic() - started
            elif what == "serve":
                for line in code.strip().splitlines():
                    argv = line.replace("-p 8000", f"-p {web_port}").split()
                    if argv[0] == "python":
                        argv[0] = python
                    elif argv[0] in ("daphne", "celery"):
                        argv[0] = str(venv / "bin" / argv[0])
                    # serve-0: reco_stream, 1: reco_push, 2: daphne, 3-4: Celery
                    with open(logs / f"serve-{len(servers)}.log", "ab") as log:
                        servers.append(
                            subprocess.Popen(
                                argv,
                                cwd=project,
                                env=env,
                                stdout=log,
                                stderr=subprocess.STDOUT,
                                start_new_session=True,
                            )
                        )
            else:
                path, mode = what.rsplit(" ", 1)
                target = project / path
                if mode == "write":
                    target.write_text(code)
                elif mode == "style":
                    target.write_text(f"{target.read_text()}<style>\n{code}</style>\n")
                else:
                    target.write_text(target.read_text() + "\n" + code)
                if path.endswith("settings.py") and mode == "append":
                    timings.setdefault("configured", time.monotonic() - started)
        template.write_text(template.read_text() + "</body></html>\n")
        checked = run(python, "manage.py", "check")
        assert "reco_plugin" not in checked.stdout + checked.stderr, checked.stderr

        # 3. before anybody browses, the job learns the imported orders
        r = redis_lib.Redis(port=live_stack.ports.redis, decode_responses=True)
        with prefix("myshop"):
            bought_with = keys.product_fbt("1")
            counters, offsets = keys.pipeline_counters(), keys.pipeline_offsets()
            purchases = next(
                t
                for t in json.loads(
                    run(
                        python,
                        "manage.py",
                        "shell",
                        "-c",
                        "import json; from reco_plugin.conf import reco_settings; "
                        "print(json.dumps(list(reco_settings.TOPICS.values())))",
                    ).stdout.split("\n")[-2]
                )
                if "purchase" in t
            )
        wait_for_key(r, bought_with, servers, logs)
        timings["learnt_history"] = time.monotonic() - started
        assert {i["product_id"] for i in json.loads(r.get(bought_with))} == BOUGHT - {"1"}
        ends = end_offsets(f"127.0.0.1:{live_stack.ports.kafka}", [purchases])
        assert sum(ends.values()) == 20  # ten orders of two lines
        wait_applied(r, offsets, ends)
        applied = totals({k: int(v) for k, v in r.hgetall(counters).items()})
        assert applied.get("applied") == 20, applied
        # imported twice: the second run sends nothing...
        again = run(python, "manage.py", "reco_import", "--orders")
        assert "nothing to send" in again.stderr, again.stderr
        assert end_offsets(f"127.0.0.1:{live_stack.ports.kafka}", [purchases]) == ends
        # ...and with its record lost, sends the same events, which the job
        # recognises: what it applied, and the whole state, are unchanged
        with prefix("myshop"):
            before = redis_state(r, "myshop:*")
        run(
            python,
            "manage.py",
            "shell",
            "-c",
            "from reco_plugin.models import ImportProgress; ImportProgress.objects.all().delete()",
        )
        resent = run(python, "manage.py", "reco_import", "--orders")
        assert "20 events sent" in resent.stdout, resent.stdout
        ends = end_offsets(f"127.0.0.1:{live_stack.ports.kafka}", [purchases])
        assert sum(ends.values()) == 40
        wait_applied(r, offsets, ends)
        twice = totals({k: int(v) for k, v in r.hgetall(counters).items()})
        assert twice.get("applied") == 20 and twice.get("duplicate") == 20, twice
        with prefix("myshop"):
            after = redis_state(r, "myshop:*")
            # the records read and counted; the processes' producer counts and
            # Celery's samples for the dashboard (stats:*)
            moved = {counters, offsets, keys.producer_stats()}
        changed = [
            k
            for k in {*before, *after} - moved
            if before.get(k) != after.get(k) and not k.startswith("myshop:stats:")
        ]
        assert not changed, {k: (before.get(k), after.get(k)) for k in changed}

        # 4. the shop is up: the first visitor's page shows the history
        web = f"http://127.0.0.1:{web_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                _, html = ShopVisitor(web).get("/products/1/")
                break
            except OSError:
                assert time.monotonic() < deadline, (logs / "serve-2.log").read_text()[-3000:]
                time.sleep(0.3)
        shown = set(re.findall(r'data-product-id="(\d+)"', html))
        assert shown and shown <= BOUGHT, shown
        # 5. a first visitor browses, the job learns
        first = ShopVisitor(web)
        for product in range(1, 13):
            first.get(f"/products/{product}/")
        with prefix("myshop"):
            similar_key = keys.product_similar("1")
            heartbeat = keys.pipeline_heartbeat()
        # lamp 1's similar list held what it was bought with (the import): wait
        # until it holds what the first visitor viewed with it
        viewed = {str(p) for p in range(2, 13)}
        wait_for_key(r, similar_key, servers, logs, holding=viewed)
        assert r.exists(heartbeat)

        # 6. a second visitor sees a live widget
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
            )
            context = browser.new_context(viewport={"width": 1100, "height": 900})
            page = context.new_page()
            page.goto(web + "/products/1/")
            page.wait_for_selector(f"{FOR_YOU}[data-reco-live='websocket']", timeout=20_000)
            shown = widget_ids(page, ".reco-widget[data-reco-kind='similar']")
            # viewed with lamp 1 by the first visitor, or bought with it before
            assert shown and set(shown) <= {str(p) for p in range(2, 13)} | BOUGHT - {"1"}
            # widget.css, linked by the tag and served as a static file, themed
            # by the guide's CSS variables
            grid = page.evaluate(
                """() => {
                  const list = getComputedStyle(document.querySelector('.reco-widget__list'));
                  const link = getComputedStyle(document.querySelector('.reco-item__link'));
                  return {display: list.display, radius: link.borderRadius,
                          columns: list.gridTemplateColumns.split(' ').map(parseFloat)};
                }"""
            )
            assert grid["display"] == "grid" and grid["radius"] == "0px", grid
            assert min(grid["columns"]) >= 180, grid
            timings["live_widget"] = time.monotonic() - started
            before = widget_ids(page)
            assert before and not set(before) & set(shown)  # the two widgets do not repeat
            other = context.new_page()
            other.goto(web + f"/products/{before[0]}/")
            page.wait_for_function(
                'ids => [...document.querySelectorAll("' + FOR_YOU + ' [data-product-id]")]'
                ".map(n => n.dataset.productId).join(',') !== ids",
                arg=",".join(before),
                timeout=30_000,
            )
            timings["pushed"] = time.monotonic() - started
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "install-guide-shop.png"), full_page=True)
            browser.close()

        # 7. the guide's Celery worker and beat: a product saved is synced by a
        # task the worker ran (not at once in the request: the broker answers)
        run(
            python,
            "manage.py",
            "shell",
            "-c",
            "from catalog.models import Product; p = Product.objects.get(pk=2); "
            "p.name = 'Lamp 2, renamed'; p.save()",
        )
        with prefix("myshop"):
            product_2 = keys.catalog_product("2")
        worker, beat = logs / "serve-3.log", logs / "serve-4.log"
        deadline = time.monotonic() + 60
        while not (
            r.hget(product_2, "title") == "Lamp 2, renamed"
            and re.search(r"Task reco_plugin\.sync_products\[.*\] succeeded", worker.read_text())
        ):
            assert time.monotonic() < deadline, worker.read_text()[-3000:]
            time.sleep(0.5)
        assert "beat: Starting" in beat.read_text(), beat.read_text()[-2000:]
    finally:
        for server in reversed(servers):
            stop_process(server, grace=30)
        shutil.rmtree(project / "var", ignore_errors=True)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "install-guide.json").write_text(
        json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=1)
    )
