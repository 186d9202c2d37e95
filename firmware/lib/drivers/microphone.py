"""I2S MEMS microphone (INMP441, SPH0645) sound level as RMS dBFS, via `machine.I2S`."""

import array

import machine
from fieldhub_node.audio import rms_dbfs

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass

# 1,024 samples at 16 kHz is 64 ms of sound: long enough for a stable RMS, short enough for the
# node's loop; 4 KB of samples is allocated once.
SAMPLES = 1024


class Microphone:
    """Reads `sound_dbfs`, the RMS level of one block of samples."""

    def __init__(self, mic_config: dict[str, Any]) -> None:
        self._bits = mic_config["bits"]
        self._i2s = machine.I2S(
            0,
            sck=machine.Pin(mic_config["sck"]),
            ws=machine.Pin(mic_config["ws"]),
            sd=machine.Pin(mic_config["sd"]),
            mode=machine.I2S.RX,
            bits=self._bits,
            format=machine.I2S.MONO,
            rate=mic_config["sample_rate"],
            ibuf=SAMPLES * 8,
        )
        self._samples = array.array("i" if self._bits == 32 else "h", [0] * SAMPLES)

    def read(self) -> dict[str, Any]:
        got = self._i2s.readinto(self._samples)
        if not got:
            return {}
        count = got // (self._bits // 8)
        # An INMP441 puts 24 bits in the top of each 32-bit slot: the level in dBFS is the same
        # whether measured against 2**31 or 2**23 after shifting, so no shift is needed.
        return {"sound_dbfs": rms_dbfs(self._samples[:count], self._bits)}
