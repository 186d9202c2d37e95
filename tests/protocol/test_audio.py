"""Sound level of WAV clips: RMS in dBFS against signals whose level is known in closed form."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldhub.protocol.audio import AudioError, measure_pcm, measure_wav
from fieldhub_node.audio import FLOOR_DBFS, rms_dbfs
from support.audio import RATE, quantisation_db, sine, wav_bytes

# Levels are reported to 0.1 dB, so a closed-form level may differ by half of that.
ROUNDING_DB = 0.05


@pytest.mark.parametrize("amplitude", [32_767, 10_000, 1_000, 100])
def test_sine_reads_its_rms_relative_to_full_scale(amplitude: int) -> None:
    """A sine of amplitude A has RMS A/sqrt(2): a full-scale sine reads -3.01 dBFS."""
    level = measure_wav(wav_bytes(sine(amplitude)))
    expected = 20 * math.log10(amplitude / math.sqrt(2) / 32_768)
    assert level.dbfs == pytest.approx(expected, abs=quantisation_db(amplitude) + ROUNDING_DB)
    assert (level.sample_rate, level.channels, level.sample_bits) == (RATE, 1, 16)
    assert level.duration_s == pytest.approx(2.0)


def test_full_scale_square_wave_is_zero_dbfs() -> None:
    level = measure_wav(wav_bytes([-32_768, 32_767] * 8_000))
    assert level.dbfs == 0.0


@pytest.mark.parametrize("constant", [0, 1, -7, 12_000])
def test_silence_and_dc_offset_read_the_floor(constant: int) -> None:
    """A constant is a microphone's DC offset, not sound: like silence it reads the floor."""
    level = measure_wav(wav_bytes([constant] * 32_000))
    assert level.dbfs == FLOOR_DBFS == -120.0


def test_dc_offset_does_not_change_a_tone() -> None:
    tone = sine(3_000, seconds=0.5)
    offset = [value + 5_000 for value in tone]
    assert measure_wav(wav_bytes(offset)).dbfs == measure_wav(wav_bytes(tone)).dbfs


def test_stereo_rms_covers_both_channels() -> None:
    """One silent and one full-scale square channel: half the power, -3.01 dBFS."""
    square = [-32_768, 32_767] * 4_000
    interleaved = [value for pair in zip([0] * len(square), square, strict=True) for value in pair]
    level = measure_wav(wav_bytes(interleaved, channels=2))
    assert level.channels == 2
    assert level.dbfs == pytest.approx(-3.0, abs=ROUNDING_DB)
    assert level.duration_s == pytest.approx(0.5)


@pytest.mark.parametrize(("width", "full_scale"), [(1, 128), (3, 1 << 23), (4, 1 << 31)])
def test_other_sample_widths_scale_to_their_own_full_scale(width: int, full_scale: int) -> None:
    """The same relative level reads the same dBFS at 8, 24 and 32 bits."""
    amplitude = full_scale // 4
    level = measure_wav(wav_bytes(sine(amplitude, seconds=0.5), width=width))
    expected = 20 * math.log10(amplitude / math.sqrt(2) / full_scale)
    assert level.sample_bits == width * 8
    assert level.dbfs == pytest.approx(expected, abs=quantisation_db(amplitude) + ROUNDING_DB)


def test_headerless_pcm_is_measured_like_the_same_wav() -> None:
    samples = sine(5_000, seconds=0.25)
    raw = struct.pack(f"<{len(samples)}h", *samples)
    from_pcm = measure_pcm(raw, sample_bytes=2, channels=1, sample_rate=RATE)
    assert from_pcm.dbfs == pytest.approx(measure_wav(wav_bytes(samples)).dbfs)


@pytest.mark.parametrize(
    ("clip", "message"),
    [
        (b"RIFF\x00\x00\x00\x00WAVEjunk", "not a PCM WAV clip"),
        (b"not audio at all", "not a PCM WAV clip"),
        (wav_bytes([]), "no samples"),
    ],
)
def test_what_is_not_a_measurable_clip_says_why(clip: bytes, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        measure_wav(clip)


def test_float_wav_is_refused_by_name() -> None:
    """IEEE float WAV (format 3) is not integer PCM; the error says it is not PCM."""
    clip = bytearray(wav_bytes(sine(1_000, seconds=0.01)))
    clip[20:22] = (3).to_bytes(2, "little")
    with pytest.raises(AudioError, match="not a PCM WAV clip"):
        measure_wav(bytes(clip))


def test_a_recording_longer_than_a_minute_is_refused() -> None:
    raw = bytes(2 * 61 * 100)  # 61 s at 100 Hz, 16-bit mono
    with pytest.raises(AudioError, match="at most 60 s"):
        measure_pcm(raw, sample_bytes=2, channels=1, sample_rate=100)


@given(st.binary(max_size=2_000))
def test_any_bytes_give_a_level_or_an_audio_error(data: bytes) -> None:
    """Whatever a device sends, the measurement returns a finite level or raises AudioError."""
    try:
        level = measure_wav(b"RIFF" + data)
    except AudioError:
        return
    assert math.isfinite(level.dbfs)
    assert FLOOR_DBFS <= level.dbfs <= 0.1


@given(
    st.lists(st.integers(-32_768, 32_767), min_size=1, max_size=400),
)
def test_the_same_level_as_the_firmware_computes(samples: list[int]) -> None:
    """One definition: fieldhub's fast path agrees with the firmware core's loop."""
    raw = struct.pack(f"<{len(samples)}h", *samples)
    ours = measure_pcm(raw, sample_bytes=2, channels=1, sample_rate=RATE).dbfs
    firmware = rms_dbfs(samples, 16)
    # Both round to 0.1 dB; float order of summation may tip a value sitting on a boundary.
    assert ours == pytest.approx(firmware, abs=0.1 + 1e-9)
