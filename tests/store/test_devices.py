"""Device reads: ordering, cursor pagination, profile/presence/search filters, counts."""

from __future__ import annotations

import itertools
import random

import pytest

from fieldhub.protocol.messages import Decoded, Presence
from fieldhub.store import DeviceRow, Store, WriteBatch
from fieldhub.store.types import PresenceState
from support.store_rows import T0, S, msg


async def list_all(
    store: Store,
    *,
    profile: str | None = None,
    presence: PresenceState | None = None,
    search: str | None = None,
    now_us: int = T0,
) -> list[DeviceRow]:
    return await store.list_devices(
        profile=profile, presence=presence, search=search, limit=10_000, after=None, now_us=now_us
    )


async def ids(
    store: Store,
    *,
    profile: str | None = None,
    presence: PresenceState | None = None,
    search: str | None = None,
    now_us: int = T0,
) -> list[str]:
    """Matching ids, after checking count_devices agrees with the list."""
    rows = await list_all(store, profile=profile, presence=presence, search=search, now_us=now_us)
    count = await store.count_devices(
        profile=profile, presence=presence, search=search, now_us=now_us
    )
    assert count == len(rows)
    return [r.device_id for r in rows]


async def test_get_unknown_device_is_none(store: Store) -> None:
    """An id the store never saw gives None, not an error."""
    assert await store.get_device("nobody", now_us=T0) is None
    await store.write_batch(WriteBatch(decoded=[msg("somebody")]))
    assert await store.get_device("nobody", now_us=T0) is None


async def test_empty_store_lists_nothing(store: Store) -> None:
    """No devices: an empty page and a zero count."""
    assert await ids(store) == []


async def test_listed_by_id_with_complete_cursor_pages(store: Store) -> None:
    """250 devices written in random order come back sorted, in pages of 100, each once."""
    names = [f"esp-{n:04d}" for n in range(250)]
    shuffled = names.copy()
    random.Random(7).shuffle(shuffled)
    await store.write_batch(WriteBatch(decoded=[msg(name) for name in shuffled]))

    pages: list[list[str]] = []
    after: str | None = None
    for _ in range(10):  # bounded: a cursor that repeats rows must fail, not hang
        page = await store.list_devices(
            profile=None, presence=None, search=None, limit=100, after=after, now_us=T0
        )
        if not page:
            break
        pages.append([row.device_id for row in page])
        after = page[-1].device_id

    assert [len(page) for page in pages] == [100, 100, 50]
    assert list(itertools.chain.from_iterable(pages)) == names
    assert await ids(store) == names


async def test_cursor_between_ids(store: Store) -> None:
    """The cursor need not be an existing id: listing resumes after it in id order."""
    await store.write_batch(WriteBatch(decoded=[msg(n) for n in ("a", "b1", "c")]))

    page = await store.list_devices(
        profile=None, presence=None, search=None, limit=10, after="b", now_us=T0
    )
    assert [row.device_id for row in page] == ["b1", "c"]


async def test_profile_filter(store: Store) -> None:
    """Only devices of the profile, still in id order and paginated."""
    await store.write_batch(
        WriteBatch(
            decoded=[
                msg(f"dev-{n:02d}", profile="native" if n % 3 else "readings") for n in range(30)
            ]
        )
    )

    readings = await ids(store, profile="readings")
    assert readings == [f"dev-{n:02d}" for n in range(0, 30, 3)]
    assert len(await ids(store, profile="native")) == 20
    assert await ids(store, profile="tasmota") == []
    page = await store.list_devices(
        profile="readings", presence=None, search=None, limit=4, after="dev-03", now_us=T0
    )
    assert [row.device_id for row in page] == ["dev-06", "dev-09", "dev-12", "dev-15"]


async def test_presence_computed_from_now(store: Store) -> None:
    """offline if the device said so; stale if silent longer than its profile allows; else online.

    The fixture sets native = 120 s and readings = 90 s. At NOW, T0 is 100 s ago: fresh for
    native, stale for readings.
    """
    now = T0 + 100 * S
    await store.write_batch(
        WriteBatch(
            decoded=[
                msg("n-fresh", T0),
                msg("n-online", T0, presence="online"),
                msg("n-old", T0 - 60 * S, presence="online"),
                msg("n-offline", now, presence="offline"),
                msg("n-offline-old", T0 - 3600 * S, presence="offline"),
                msg("r-fresh", T0 + 50 * S, profile="readings", presence="online"),
                msg("r-old", T0, profile="readings", presence="online"),
                msg("r-silent", T0, profile="readings"),
            ]
        )
    )

    assert await ids(store, presence="online", now_us=now) == ["n-fresh", "n-online", "r-fresh"]
    assert await ids(store, presence="stale", now_us=now) == ["n-old", "r-old", "r-silent"]
    assert await ids(store, presence="offline", now_us=now) == ["n-offline", "n-offline-old"]
    states = {row.device_id: row.presence for row in await list_all(store, now_us=now)}
    assert states == {
        "n-fresh": "online",
        "n-online": "online",
        "n-old": "stale",
        "n-offline": "offline",
        "n-offline-old": "offline",
        "r-fresh": "online",
        "r-old": "stale",
        "r-silent": "stale",
    }
    for device_id, state in states.items():
        row = await store.get_device(device_id, now_us=now)
        assert row is not None
        assert row.presence == state
    # Everything recent again an hour earlier (the offline ones stay offline).
    assert await ids(store, presence="stale", now_us=T0) == []
    assert await ids(store, presence="offline", now_us=T0) == ["n-offline", "n-offline-old"]


async def test_stale_boundary(store: Store) -> None:
    """Silent exactly stale_after_s is still online; one microsecond more is stale."""
    await store.write_batch(WriteBatch(decoded=[msg("n", T0, presence="online")]))

    at_limit = await store.get_device("n", now_us=T0 + 120 * S)
    past_limit = await store.get_device("n", now_us=T0 + 120 * S + 1)
    assert at_limit is not None
    assert past_limit is not None
    assert (at_limit.presence, past_limit.presence) == ("online", "stale")


async def test_fresh_message_ends_staleness(store: Store) -> None:
    """A stale device that speaks again is online."""
    await store.write_batch(WriteBatch(decoded=[msg("n", T0, presence="online")]))
    now = T0 + 600 * S
    assert await ids(store, presence="stale", now_us=now) == ["n"]

    await store.write_batch(WriteBatch(decoded=[msg("n", now - S)]))
    assert await ids(store, presence="online", now_us=now) == ["n"]


SEARCH_DEVICES = [
    msg("alpha-01", attributes={"location": "greenhouse 50%", "fw": "1.2.0"}),
    msg("beta-02", attributes={"location": "barn", "note": "room_b"}),
    msg("gamma_03", attributes={"location": "field"}),
    msg("delta%04", attributes={}),
    msg("epsilon-05", attributes={"fw": "1.3.0", "batch": "xa_0z"}),
]


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("alpha", ["alpha-01"]),
        ("-0", ["alpha-01", "beta-02", "epsilon-05"]),
        ("greenhouse", ["alpha-01"]),
        ("1.3.0", ["epsilon-05"]),
        # `_` and `%` are literal characters, not LIKE wildcards.
        ("a_0", ["epsilon-05", "gamma_03"]),
        ("_", ["beta-02", "epsilon-05", "gamma_03"]),
        ("%", ["alpha-01", "delta%04"]),
        ("%0", ["delta%04"]),
        ("50%", ["alpha-01"]),
        ("a%b", []),
        ("nothing-like-this", []),
    ],
)
async def test_search_in_id_and_attributes(store: Store, search: str, expected: list[str]) -> None:
    """A substring of the id or of an attribute value; the count agrees."""
    await store.write_batch(WriteBatch(decoded=list(SEARCH_DEVICES)))

    assert await ids(store, search=search) == sorted(expected)


async def test_filters_combine_and_counts_agree(store: Store) -> None:
    """Every combination of profile, presence and search: count == len(list) == Python's answer."""
    now = T0 + 100 * S
    items: list[Decoded] = []
    for n in range(40):
        profile = "native" if n % 2 else "readings"
        presence: Presence | None = ("online", "offline", None)[n % 3]
        received = T0 + (n % 5) * 30 * S - 60 * S
        items.append(
            msg(
                f"dev-{n:02d}",
                received,
                profile=profile,
                presence=presence,
                attributes={"zone": f"z{n % 4}"},
            )
        )
    await store.write_batch(WriteBatch(decoded=items))

    def expected_state(item: Decoded) -> str:
        if item.presence == "offline":
            return "offline"
        limit_s = 120 if item.profile == "native" else 90
        return "stale" if item.received_us < now - limit_s * S else "online"

    for profile, presence, search in itertools.product(
        (None, "native", "readings"),
        (None, "online", "offline", "stale"),
        (None, "z1", "dev-1"),
    ):
        expected = sorted(
            item.device_id
            for item in items
            if (profile is None or item.profile == profile)
            and (presence is None or expected_state(item) == presence)
            and (
                search is None
                or search in item.device_id
                or any(search in str(value) for value in item.attributes.values())
            )
        )
        got = await ids(store, profile=profile, presence=presence, search=search, now_us=now)
        assert got == expected, (profile, presence, search)
