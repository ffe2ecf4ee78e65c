"""Garbage-collector settings for the web process.

The web process holds over 100,000 objects the collector tracks once it has loaded Django, DRF,
every module and the URLconf; they live as long as the process. Every full collection walked
all of them with every thread stopped (the GIL is held): under `bench e2e` (16 clients) two
full collections of ~200 ms each in half a minute, each delaying every request in flight.

`serving_gc()` runs once the application is loaded: one collection, then `gc.freeze()` moves
what survives out of the collector's sight. Same run after it: full collections ~45 ms, all
collections together ~0.74 s instead of ~1 s. The thresholds stay Python's: larger ones
(5,000 or 50,000 young objects) cut the total further but made each young or middle collection
long (70-100 ms), which a request in flight pays whole.
"""

import gc
import os
import sys
import threading
import time


def serving_gc() -> None:
    """Freeze what start-up loaded out of the collector (GC_PAUSE_REPORT=<seconds> also logs
    the collections' count and time to stderr that often)."""
    gc.collect()
    gc.freeze()
    if os.environ.get("GC_PAUSE_REPORT"):
        _pause_report(float(os.environ["GC_PAUSE_REPORT"]))


def _pause_report(every_s: float) -> None:
    """Log collections per generation and their total time every `every_s` seconds (a
    diagnostic: GC_PAUSE_REPORT=<seconds>)."""
    counts, totals, started = [0, 0, 0], [0.0, 0.0, 0.0], [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            counts[info["generation"]] += 1
            totals[info["generation"]] += time.perf_counter() - started[0]

    def report() -> None:
        while True:
            time.sleep(every_s)
            print(
                f"gc collections {counts} total ms {[round(t * 1000, 1) for t in totals]}",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(callback)
    threading.Thread(target=report, name="gc-report", daemon=True).start()
