"""Garbage-collector settings for the web process.

The web process holds over 100,000 objects the collector tracks once it has loaded Django, DRF,
every module and the URLconf; they live as long as the process. Every full collection walked
all of them with every thread stopped (the GIL is held): under `bench e2e` (16 clients) two
full collections of ~200 ms each in half a minute, each delaying every request in flight.

`serving_gc()` runs once the application is loaded: one collection, then `gc.freeze()` moves
what survives out of the collector's sight. Same run after it: full collections ~45 ms, all
collections together ~0.74 s instead of ~1 s.

A young collection starts after YOUNG_THRESHOLD more tracked objects are allocated than freed
(Python's default: 700). An API request or a WebSocket op leaves no reference cycle behind
(DRF's are cut in `exchange.view_threads`, a body serializer drops its fields:
`test_request_garbage`), so its objects are freed as it ends and the count only grows with what
is in flight. With 700, the young collections came every few milliseconds and moved in-flight
requests into the old generation, which set off a full collection (~100 ms, every thread
stopped) every few seconds: `bench ws` (1,000 subscribers, orders over REST) had 877 young, 79
middle and 7 full collections in ~40 s, 1.5 s in all, and a commit-to-client p99 of 146 ms; with
5,000: 51, 4 and 0, 0.16 s, p99 52 ms (2026-11-26). 20,000 made a middle collection 108 ms.
"""

import gc
import sys
import threading
import time

YOUNG_THRESHOLD = 5_000


def serving_gc() -> None:
    """Freeze what start-up loaded out of the collector and set the young generation's
    threshold (GC_PAUSE_REPORT=<seconds> also logs the collections' count and time to stderr
    that often)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    from django.conf import settings

    if settings.GC_PAUSE_REPORT:
        _pause_report(settings.GC_PAUSE_REPORT)


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
