"""The site's own labelled examples: every manual window command, with what the room measured.

A person (dashboard, API, CLI) or a rule who sets a window says where it should be given the
room as it was: each `set_window` whose id is not the loop's own (`ml-...`), with the device's
window means of temperature, humidity and sound over the `window_s` before the command (the
same features the loop decides from), is an example `(temperature, humidity, sound_volume,
position)`. A command whose window lacks a feature is left out (counted). `fieldhub ml train
--history` trains the next version from the active one on them (docs/ml.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fieldhub.ml.features import check
from fieldhub.ml.loop import COMMAND_PREFIX
from fieldhub.ml.trigger import FEATURES, TriggerParams
from fieldhub.ml.windows import window_means
from fieldhub.store.base import Store

Example = tuple[float, float, float, float]
# Pages read while walking devices and their commands.
PAGE = 1_000


@dataclass(frozen=True, slots=True)
class Examples:
    """The examples found, and how many manual commands could not be one (and why)."""

    examples: list[Example]
    skipped: dict[str, int]


async def manual_examples(
    store: Store, *, start_us: int, end_us: int, window_s: float = TriggerParams().window_s
) -> Examples:
    """Every manual `set_window` created in [start_us, end_us], as an example."""
    examples: list[Example] = []
    skipped: dict[str, int] = {}
    after: str | None = None
    while True:
        devices = await store.list_devices(
            profile=None, presence=None, search=None, limit=PAGE, after=after, now_us=end_us
        )
        for device in devices:
            for command in await _manual_commands(store, device.device_id, start_us, end_us):
                position = command[1]
                values = (await window_means(store, device.device_id, command[0], window_s)).values
                problem = check(values)
                if problem is not None:
                    skipped[problem] = skipped.get(problem, 0) + 1
                    continue
                t, h, s = (float(values[name] or 0.0) for name in FEATURES)
                examples.append((t, h, s, position))
        if len(devices) < PAGE:
            return Examples(examples, skipped)
        after = devices[-1].device_id


async def _manual_commands(
    store: Store, device_id: str, start_us: int, end_us: int
) -> list[tuple[int, float]]:
    """(created_us, position) of the device's manual set_window commands in the window."""
    found: list[tuple[int, float]] = []
    before: tuple[int, str] | None = None
    while True:
        page = await store.list_commands(device_id, state=None, limit=PAGE, before=before)
        for row in page:
            if not start_us <= row.created_us <= end_us or row.name != "set_window":
                continue
            if row.command_id.startswith(COMMAND_PREFIX):
                continue
            position = row.params.get("position")
            if isinstance(position, int | float) and not isinstance(position, bool):
                found.append((row.created_us, float(position)))
        if len(page) < PAGE or page[-1].created_us < start_us:
            return found
        before = (page[-1].created_us, page[-1].command_id)


def summary(found: Examples) -> str:
    """One line: how many examples, and what kept the others out."""
    left_out = ", ".join(f"{n} {why}" for why, n in sorted(found.skipped.items()))
    return f"{len(found.examples)} examples" + (f" ({left_out} left out)" if left_out else "")


__all__: Sequence[str] = ("Example", "Examples", "manual_examples", "summary")
