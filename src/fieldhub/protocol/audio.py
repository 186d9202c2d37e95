"""Sound level of a WAV clip: RMS in dBFS, the reading the window-control stack's devices imply.

Its ESP32s publish two seconds of I2S microphone audio as a base64 WAV; the stack's backend
extracted a volume from it, and fieldhub stores that volume as the `sound_volume` reading.

The definition is fieldhub's firmware's (`fieldhub_node.audio.rms_dbfs`, docs/protocol.md), so a
`sound_volume` means the same whichever device sent it: the RMS of every sample of every channel
after removing the mean (MEMS microphones have a DC offset), relative to the full-scale amplitude
of the sample format, in decibels, rounded to 0.1 dB. A full-scale square wave reads 0 dBFS and a
full-scale sine -3.0 dBFS (plain RMS, not AES17's, which adds 3.01 dB to sines). Silence reads
the floor, `FLOOR_DBFS` (-120 dBFS), so the reading is always a number charts can use.

This module measures the same thing faster under CPython than the firmware's loop, which is
written for MicroPython: integer sums in C, one pass. Both are checked against each other.
"""

from __future__ import annotations

import io
import math
import operator
import sys
import wave
from array import array
from dataclasses import dataclass

from fieldhub_node.audio import FLOOR_DBFS

# The sample widths a PCM WAV from a microphone uses, as array type codes. 8-bit WAV samples are
# unsigned (centred on 128); wider ones are signed little-endian. 24-bit has no array type and is
# widened to 32-bit first.
_SIGNED_TYPECODES = {2: "h", 4: "i"}
# A clip longer than this is not a sound-level sample but a recording; refusing it bounds the
# decoding work per message (one minute of 48 kHz stereo 32-bit is 23 MB, far above any route's
# payload limit anyway).
MAX_SECONDS = 60.0


class AudioError(ValueError):
    """The bytes are not a PCM WAV clip this module can measure; the message says why."""


@dataclass(frozen=True, slots=True)
class SoundLevel:
    """What one clip measured."""

    dbfs: float
    sample_rate: int
    channels: int
    sample_bits: int
    duration_s: float


def _full_scale(sample_bits: int) -> int:
    return 1 << (sample_bits - 1)


def _samples(frames: bytes, width: int) -> array[int]:
    """Signed integer samples of little-endian PCM frames of `width` bytes per sample."""
    if width == 1:
        unsigned = array("B", frames)
        return array("h", (value - 128 for value in unsigned))
    if width == 3:
        # Widen each 3-byte sample to 4 bytes (the low byte zero), which scales by 256; the
        # caller's full scale is taken for 24 bits and the ratio is the same after dividing by 256.
        widened = bytearray(len(frames) // 3 * 4)
        widened[1::4] = frames[0::3]
        widened[2::4] = frames[1::3]
        widened[3::4] = frames[2::3]
        frames = bytes(widened)
        width = 4
    samples = array(_SIGNED_TYPECODES[width])
    if samples.itemsize != width:
        raise AudioError(f"this platform has no {width}-byte integer array type")
    samples.frombytes(frames)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def measure_wav(data: bytes) -> SoundLevel:
    """RMS level in dBFS of a PCM WAV clip (8, 16, 24 or 32-bit integer samples, any channels)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as clip:
            channels = clip.getnchannels()
            width = clip.getsampwidth()
            rate = clip.getframerate()
            count = clip.getnframes()
            if rate <= 0:
                raise AudioError(f"WAV sample rate is {rate}")
            if count / rate > MAX_SECONDS:
                raise AudioError(
                    f"clip is {count / rate:.1f} s long; at most {MAX_SECONDS:g} s is measured"
                )
            frames = clip.readframes(count)
    except (wave.Error, EOFError) as exc:
        # wave raises Error for a bad header or a non-PCM format (e.g. IEEE float: format 3).
        raise AudioError(f"not a PCM WAV clip: {exc}") from None
    return measure_pcm(frames, sample_bytes=width, channels=channels, sample_rate=rate)


def measure_pcm(frames: bytes, *, sample_bytes: int, channels: int, sample_rate: int) -> SoundLevel:
    """RMS level in dBFS of little-endian integer PCM frames (what a WAV holds after its header)."""
    width = sample_bytes
    if width not in (1, 2, 3, 4):
        raise AudioError(f"{width * 8}-bit samples are not supported (8, 16, 24 or 32-bit)")
    if channels < 1 or sample_rate <= 0:
        raise AudioError(f"{channels} channels at {sample_rate} Hz is not audio")
    frame_bytes = width * channels
    usable = len(frames) - len(frames) % frame_bytes
    if usable == 0:
        raise AudioError("clip has no samples")
    if usable / frame_bytes / sample_rate > MAX_SECONDS:
        seconds = usable / frame_bytes / sample_rate
        raise AudioError(f"clip is {seconds:.1f} s long; at most {MAX_SECONDS:g} s is measured")
    samples = _samples(frames[:usable], width)
    bits = width * 8
    scale = _full_scale(bits) * (256 if width == 3 else 1)
    # Sums in integers are exact, so the variance below has no cancellation error; map(mul) runs
    # the loop in C. A whole 2 s 16 kHz clip message (JSON, base64, WAV, level) decodes in 3-5 ms
    # here (7 timings on a busy 2-core machine). n * variance = sum(x^2) - sum(x)^2 / n.
    count = len(samples)
    total = sum(samples)
    squares = sum(map(operator.mul, samples, samples))
    rms = math.sqrt(max(squares * count - total * total, 0) / (count * count)) / scale
    level = round(20.0 * math.log10(rms), 1) if rms > 0 else FLOOR_DBFS
    return SoundLevel(
        dbfs=max(level, FLOOR_DBFS),
        sample_rate=sample_rate,
        channels=channels,
        sample_bits=bits,
        duration_s=len(samples) / channels / sample_rate,
    )
