"""Sound level from raw I2S samples: RMS in dBFS (0 dBFS is a full-scale square wave)."""

import math

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass

# Silence has no finite dBFS; report this floor instead, below any real microphone's noise floor
# (an INMP441's is about -87 dBFS), so "quiet" stays a number on a chart.
FLOOR_DBFS = -120.0


def rms_dbfs(samples: Any, bits: int) -> float:
    """RMS level of signed integer `samples` (full scale is 2**(bits-1)), in dBFS, >= FLOOR_DBFS.

    The mean is removed first: MEMS microphones have a DC offset that would otherwise read as a
    loud constant tone.
    """
    n = len(samples)
    if n == 0:
        return FLOOR_DBFS
    mean = 0.0
    for s in samples:
        mean += s
    mean /= n
    acc = 0.0
    for s in samples:
        d = s - mean
        acc += d * d
    rms = math.sqrt(acc / n)
    full_scale = float(1 << (bits - 1))
    if rms <= 0:
        return FLOOR_DBFS
    level = 20 * math.log10(rms / full_scale)
    return max(FLOOR_DBFS, round(level, 1))
