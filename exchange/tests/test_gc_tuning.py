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
