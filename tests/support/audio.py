"""WAV clips with levels known in closed form, for the tests of sound-level decoding."""

from __future__ import annotations

import io
import math
import struct
import wave

RATE = 16_000


def wav_bytes(samples: list[int], *, width: int = 2, channels: int = 1, rate: int = RATE) -> bytes:
    """A PCM WAV of integer samples (interleaved when `channels` > 1), written by stdlib wave."""
    if width == 1:
        frames = bytes(value + 128 for value in samples)
    elif width == 3:
        frames = b"".join(value.to_bytes(3, "little", signed=True) for value in samples)
    else:
        frames = struct.pack(f"<{len(samples)}{'h' if width == 2 else 'i'}", *samples)
    out = io.BytesIO()
    with wave.open(out, "wb") as clip:
        clip.setnchannels(channels)
        clip.setsampwidth(width)
        clip.setframerate(rate)
        clip.writeframes(frames)
    return out.getvalue()


def quantisation_db(amplitude: float) -> float:
    """How far rounding samples to integers (at most 0.5 each) can move a sine's level."""
    rms = amplitude / math.sqrt(2)
    return 20 * math.log10((rms + 0.5) / rms)


def sine(amplitude: float, *, seconds: float = 2.0, hz: float = 1_000.0) -> list[int]:
    count = int(RATE * seconds)
    return [round(amplitude * math.sin(2 * math.pi * hz * i / RATE)) for i in range(count)]
