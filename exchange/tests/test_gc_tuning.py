"""The web process freezes what it loaded at start-up out of the garbage collector, so full
collections do not walk Django, DRF and every module while requests wait."""

import os
import subprocess
import sys

from conftest import BASE_DIR


def test_the_asgi_application_freezes_its_start_up_objects_and_collects_young_ones_later():
    probe = "import gc, exchange.asgi; print(gc.get_freeze_count(), *gc.get_threshold())"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "exchange.settings"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    frozen, young, middle, old = map(int, out.strip().splitlines()[-1].split())
    assert frozen > 50_000
    assert (young, middle, old) == (5_000, 10, 10)


def load_asgi(gc_pause_report: str) -> subprocess.CompletedProcess:
    probe = "import threading, exchange.asgi; "
    probe += "print(any(t.name == 'gc-report' for t in threading.enumerate()))"
    return subprocess.run(
        [sys.executable, "-c", probe],
        cwd=BASE_DIR,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "exchange.settings",
            "GC_PAUSE_REPORT": gc_pause_report,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gc_pause_report_is_a_setting_read_at_start():
    """The web process read GC_PAUSE_REPORT itself: `abc` stopped it with a bare ValueError
    naming no variable, and `0` started a reporter that printed without pause."""
    assert load_asgi("30").stdout.split() == ["True"]
    assert load_asgi("0").stdout.split() == ["False"]
    refused = load_asgi("abc")
    assert refused.returncode != 0
    assert "GC_PAUSE_REPORT must be a number, got 'abc'" in refused.stderr
