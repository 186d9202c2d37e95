"""The interpreter settings of fieldhub's long-running processes: the interpreter lock's switch
interval and the garbage collector's schedule.

Ingest allocates a few dozen short-lived objects per message (the message, its decode result,
its readings), and they live until their batch commits, 10-500 ms. With CPython's default
schedule (a young collection every 700 net allocations) they are still alive at two young
collections, so they are promoted to the oldest generation, which then fills fast enough for a
full collection about once a second: 52-70 ms each at 10,000 msg/s (measured with
`gc.callbacks`), with the interpreter lock held, so nothing else ran, not the network thread,
not the event loop. A young collection every YOUNG_THRESHOLD net allocations lets a batch's
objects die young; `freeze_startup_heap` keeps what startup built (modules, the web app,
caches) out of every collection. Measured with `./scripts/bench ingest` at 10,000 msg/s
(bench/README.md, "The garbage collector"): publish -> commit p50 0.10-0.14 s -> 0.07 s, p99
0.35-0.44 s -> 0.26 s; 5 young collections in 40 s of load instead of a full one a second.
"""

from __future__ import annotations

import gc
import sys

__all__ = ["GIL_SWITCH_INTERVAL_S", "YOUNG_THRESHOLD", "freeze_startup_heap", "tune_for_service"]

# How long a thread may hold the interpreter lock while another waits for it (Python's default is
# 5 ms). Three threads share it here: MQTT network (decoding), SQLite writer (returning from C)
# and the event loop (commits, live fan-out). At 10k readings/s with 50 live viewers, 1 ms took
# the publish -> viewer p99 from 54 to 45 ms (bench/live.py, same machine, 3 runs each).
GIL_SWITCH_INTERVAL_S = 0.001
# Net allocations of container objects between young collections (CPython's default: 700). A
# young collection costs in proportion to what is alive in the young generation, which stays
# small here (a batch's objects die at its commit): ~10 ms each, a few a minute under load.
YOUNG_THRESHOLD = 50_000
# Young collections between middle ones and middle ones between full ones: CPython's defaults.
MIDDLE_THRESHOLD = 10
OLD_THRESHOLD = 10


def tune_for_service() -> None:
    """Set the switch interval and the collector's schedule; first thing in a serving process."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


def freeze_startup_heap() -> None:
    """Collect once, then keep everything alive now out of all later collections (`gc.freeze`):
    what startup built lives as long as the process, and a full collection would otherwise
    walk all of it every time. Call once the process is up and before the load comes."""
    gc.collect()
    gc.freeze()
