"""The bounds on what devices may create (store/admission.py), on both engines: new devices
out of a budget, metrics per device, attribute keys per device and their length."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from fieldhub.store import Store, WriteBatch
from fieldhub.store.admission import InputLimits
from fieldhub.store.plan import TRUNCATED
from support.store_rows import T0, S, msg

Reopen = Callable[[Store], Awaitable[Store]]
LIMITS = InputLimits(
    new_devices_per_hour=3,
    max_metrics_per_device=4,
    max_attributes_per_device=5,
    max_attribute_chars=16,
)


async def test_new_devices_come_out_of_the_budget_known_ones_never_do(store: Store) -> None:
    store.input_limits = LIMITS
    await store.write_batch(WriteBatch(decoded=[msg("old", T0, [("t", T0, 1.0)])]))
    batch = [
        msg("old", T0 + S, [("t", T0 + S, 2.0)]),
        msg("new-1", T0 + S, [("t", T0 + S, 2.0)]),
        msg("new-1", T0 + 2 * S, [("t", T0 + 2 * S, 3.0)]),  # the same new device: once
        msg("new-2", T0 + S, [("t", T0 + S, 2.0)]),
        msg("new-3", T0 + S, [("t", T0 + S, 2.0)]),
    ]
    verdict = store.admit(batch, new_device_budget=2)
    assert verdict.new_devices == 2
    assert set(verdict.refused) == {4}
    reason, detail = verdict.refused[4]
    assert reason == "device_limit"
    assert "3 an hour" in detail
    assert store.admit(batch, new_device_budget=0.5).refused.keys() == {1, 2, 3, 4}


async def test_a_device_gets_no_more_metrics_than_its_limit(store: Store, reopen: Reopen) -> None:
    store.input_limits = LIMITS
    three = [("a", T0, 1.0), ("b", T0, 1.0), ("c", T0, 1.0)]
    await store.write_batch(WriteBatch(decoded=[msg("dev", T0, three)]))
    ok = msg("dev", T0 + S, [("a", T0 + S, 1.0), ("d", T0 + S, 1.0)])  # the 4th: fits
    over = msg("dev", T0 + S, [("e", T0 + S, 1.0)])  # a 5th after the 4th in this batch
    again = msg("dev", T0 + 2 * S, [("d", T0 + 2 * S, 2.0), ("a", T0, 5.0)])  # no new one
    other = msg("other", T0 + S, [(f"m{i}", T0, 1.0) for i in range(5)])  # 5 at once
    verdict = store.admit([ok, over, again, other], new_device_budget=10)
    assert set(verdict.refused) == {1, 3}
    assert verdict.refused[1][0] == "metric_limit"
    assert "has 4 metrics" in verdict.refused[1][1]
    await store.write_batch(WriteBatch(decoded=[ok, again]))
    # The writer's count survives a restart (loaded from device_metrics).
    store = await reopen(store)
    store.input_limits = LIMITS
    assert set(store.admit([over, again], new_device_budget=10).refused) == {0}
    # A higher limit lets it in.
    store.input_limits = replace(LIMITS, max_metrics_per_device=5)
    assert store.admit([over], new_device_budget=10).refused == {}


async def test_attributes_are_cut_and_kept_to_the_limit(store: Store) -> None:
    store.input_limits = LIMITS
    first = msg("dev", T0, [("t", T0, 1.0)], attributes={"fw": "1.0", "ip": "10.0.0.1"})
    await store.write_batch(WriteBatch(decoded=[first]))
    long_value = "x" * 60_000
    flood = msg(
        "dev",
        T0 + S,
        [("t", T0 + S, 2.0)],
        attributes={"fw": "2.0", "banner": long_value, **{f"k{i:02d}": i for i in range(10)}},
    )
    verdict = store.admit([flood], new_device_budget=10)
    assert verdict.attributes_cut == 1
    assert flood.attributes["banner"] == "x" * 15 + TRUNCATED
    result = await store.write_batch(WriteBatch(decoded=[flood]))
    device = await store.get_device("dev", now_us=T0 + S)
    assert device is not None
    # fw and ip stored, fw updated; 3 new keys of 11 (sorted: banner, k00, k01), 8 not stored.
    assert device.attributes == {
        "fw": "2.0",
        "ip": "10.0.0.1",
        "banner": "x" * 15 + TRUNCATED,
        "k00": 0,
        "k01": 1,
    }
    assert result.attributes_dropped == 8
    # At the limit, known keys still change and a null removes one, making room for one more.
    later = msg(
        "dev", T0 + 2 * S, [], attributes={"ip": "10.0.0.2", "k00": None, "zz": "new", "zy": 1}
    )
    result = await store.write_batch(WriteBatch(decoded=[later]))
    device = await store.get_device("dev", now_us=T0 + 2 * S)
    assert device is not None
    assert device.attributes["ip"] == "10.0.0.2"
    assert "k00" not in device.attributes
    assert len(device.attributes) <= LIMITS.max_attributes_per_device
    assert result.attributes_dropped == 2  # zy, zz: the null's room is counted after the batch
