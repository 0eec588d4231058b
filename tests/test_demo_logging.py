"""The demo shop's log: each line once."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_line_of_django_is_logged_once_in_debug():
    code = (
        "import django, logging; django.setup(); "
        "logging.getLogger('django.request').warning('Not Found: /nowhere/')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "demo_shop.settings", "DJANGO_DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stderr.count("Not Found: /nowhere/") == 1, result.stderr
