"""A synthetic comfort policy for the window, and labelled data drawn from it.

Pure. The window-control stack never published labelled data, so the shipped model learns this
documented policy; a deployment's own history (labels from people moving windows) replaces it
through incremental training. The policy, in words (docs/ml-model.md draws it):

* Below the comfort band (`COMFORT_LOW_C`, 20 °C) the window stays closed, whatever else.
* It opens with heat from the band's middle: linearly from 0 at `OPEN_FROM_C` (22 °C) to fully
  open at `FULL_OPEN_C` (28 °C). From the middle, not from the band's top (24 °C): a room under
  a heat load settles where the opening balances the load, which is always above where the
  opening starts; starting at the middle keeps that balance inside the band (sim/room.py's
  warm day, `tests/sim/test_room.py`), starting at the top would keep it above.
* Humidity airs the room: up to `AIRING_MAX_PCT` (30) more points as relative humidity rises
  from `HUMID_START_PCT` (60 %) to `HUMID_FULL_PCT` (85 %), weighted by how far into the band
  the temperature is (none at 20 °C, all of it from 24 °C); the opening is capped at 100.
* Noise closes it again: the opening is multiplied by `1 - LOUD_CLOSE_FRACTION * loudness`, where
  loudness rises linearly from 0 at `QUIET_DBFS` (-35 dBFS) to 1 at `LOUD_DBFS` (-15 dBFS). A
  loud street keeps at most 30 % of the opening.

The sound level is what the device's microphone hears, which a closed window attenuates
(sim/window_sensor.py: ~20 dB); the policy treats it as "how loud it is" regardless. That is a
simplification of the synthetic data, not of the model: history from a real room carries it.
"""

from __future__ import annotations

import random

# The comfort band the loop keeps a room in: closed below it.
COMFORT_LOW_C = 20.0
COMFORT_HIGH_C = 24.0
# Opening with heat from the band's middle (the module docstring says why not its top) ...
OPEN_FROM_C = 22.0
# ... to fully open (on a quiet, dry day) from this temperature up.
FULL_OPEN_C = 28.0
# Humidity airing: from this relative humidity up, up to AIRING_MAX_PCT at HUMID_FULL_PCT.
HUMID_START_PCT = 60.0
HUMID_FULL_PCT = 85.0
AIRING_MAX_PCT = 30.0
# Loudness ramp, in dBFS as fieldhub measures sound: a quiet street outside is near -35, a
# passing lorry near -15 (sim/window_sensor.py's street).
QUIET_DBFS = -35.0
LOUD_DBFS = -15.0
# The share of the opening a fully loud street takes away.
LOUD_CLOSE_FRACTION = 0.7

# Label noise of the synthetic data, in position points. People agree on "closed" and "open";
# they disagree about "half open": the spread grows from LABEL_NOISE_BASE_PCT at the ends to
# BASE + MID at 50 %. OVERRIDE_FRACTION of labels are someone moving the window for a reason the
# features do not show (uniform 0..100): the model's confidence must learn it cannot be sure.
LABEL_NOISE_BASE_PCT = 2.0
LABEL_NOISE_MID_PCT = 10.0
OVERRIDE_FRACTION = 0.03

# Input distributions of the synthetic data: a room near a window over a year, one decimal as
# the sensors print them. Temperature ~ N(23, 5) °C; humidity ~ N(55, 15) % clipped to 10..100;
# sound: a street ~ N(-30, 6) dBFS (sim/window_sensor.py's centre) most of the time, quiet
# hours ~ N(-60, 10) dBFS the rest, clipped to -120..0.
TEMPERATURE_MEAN_C = 23.0
TEMPERATURE_SD_C = 5.0
HUMIDITY_MEAN_PCT = 55.0
HUMIDITY_SD_PCT = 15.0
HUMIDITY_MIN_PCT = 10.0
STREET_MEAN_DBFS = -30.0
STREET_SD_DB = 6.0
QUIET_HOURS_MEAN_DBFS = -60.0
QUIET_HOURS_SD_DB = 10.0
QUIET_HOURS_FRACTION = 0.15

Example = tuple[float, float, float, float]


def _ramp(value: float, start: float, end: float) -> float:
    """0 at or below `start`, 1 at or above `end`, linear between."""
    return min(1.0, max(0.0, (value - start) / (end - start)))


def comfort_position(temperature: float, humidity: float, sound_volume: float) -> float:
    """The policy's window position in percent open (0 closed .. 100 open) for raw readings:
    °C, % relative humidity, dBFS."""
    if temperature < COMFORT_LOW_C:
        return 0.0
    warmth = _ramp(temperature, COMFORT_LOW_C, COMFORT_HIGH_C)
    heat = _ramp(temperature, OPEN_FROM_C, FULL_OPEN_C)
    damp = _ramp(humidity, HUMID_START_PCT, HUMID_FULL_PCT)
    opening = min(100.0, 100.0 * heat + AIRING_MAX_PCT * damp * warmth)
    loudness = _ramp(sound_volume, QUIET_DBFS, LOUD_DBFS)
    return opening * (1.0 - LOUD_CLOSE_FRACTION * loudness)


def label_noise_sd(position: float) -> float:
    """The synthetic labels' spread at a policy position: smallest at the ends."""
    return LABEL_NOISE_BASE_PCT + LABEL_NOISE_MID_PCT * min(position, 100.0 - position) / 50.0


def synthetic_dataset(n: int, seed: int) -> list[Example]:
    """`n` examples `(temperature, humidity, sound_volume, label)` drawn from the distributions
    above, labelled by `comfort_position` plus noise (`label_noise_sd`, overrides), labels
    clipped to 0..100. The same `(n, seed)` gives the same list on every run and machine."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    examples: list[Example] = []
    for _ in range(n):
        temperature = round(rng.gauss(TEMPERATURE_MEAN_C, TEMPERATURE_SD_C), 1)
        temperature = min(60.0, max(-50.0, temperature))
        humidity = round(rng.gauss(HUMIDITY_MEAN_PCT, HUMIDITY_SD_PCT), 1)
        humidity = min(100.0, max(HUMIDITY_MIN_PCT, humidity))
        if rng.random() < QUIET_HOURS_FRACTION:
            sound = rng.gauss(QUIET_HOURS_MEAN_DBFS, QUIET_HOURS_SD_DB)
        else:
            sound = rng.gauss(STREET_MEAN_DBFS, STREET_SD_DB)
        sound = min(0.0, max(-120.0, round(sound, 1)))
        position = comfort_position(temperature, humidity, sound)
        if rng.random() < OVERRIDE_FRACTION:
            label = rng.uniform(0.0, 100.0)
        else:
            label = position + rng.gauss(0.0, label_noise_sd(position))
        label = round(min(100.0, max(0.0, label)), 1)
        examples.append((temperature, humidity, sound, label))
    return examples
