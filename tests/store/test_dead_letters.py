"""Dead letters: raw bytes kept (bounded), newest first, cursor and filters."""

from __future__ import annotations

from fieldhub.protocol.messages import RejectReason
from fieldhub.store import DeadLetter, DeadLetterRow, Store, WriteBatch

T0 = 1_700_000_000_000_000

# The store keeps this much of a rejected payload and the true size beside it (part of the
# contract every engine implements, so the API can say "showing 64 KiB of 1.2 MiB").
MAX_KEPT_BYTES = 64 * 1024
MAX_PAGES = 100


def letter(
    n: int,
    *,
    reason: str = "malformed_json",
    device_id: str | None = None,
    payload: bytes = b"{",
) -> DeadLetter:
    return DeadLetter(
        topic=f"devices/{device_id or 'unknown'}/telemetry",
        payload=payload,
        reason=reason,
        detail=f"letter {n}",
        received_us=T0 + n,
        device_id=device_id,
        profile=None if device_id is None else "native",
    )


async def all_letters(
    store: Store, *, page: int = 1000, reason: str | None = None, device_id: str | None = None
) -> list[DeadLetterRow]:
    """Every matching dead letter, fetched page by page with the before_id cursor."""
    rows: list[DeadLetterRow] = []
    before: int | None = None
    # Bounded, so a cursor that repeats rows fails the test instead of hanging it.
    for _ in range(MAX_PAGES):
        batch = await store.list_dead_letters(
            limit=page, before_id=before, reason=reason, device_id=device_id
        )
        rows.extend(batch)
        if len(batch) < page:
            return rows
        before = batch[-1].id
    raise AssertionError(f"the before_id cursor did not reach the end in {MAX_PAGES} pages")


async def test_dead_letter_round_trip(store: Store) -> None:
    """Every field comes back as written; the reason may be a RejectReason."""
    result = await store.write_batch(
        WriteBatch(
            dead_letters=[
                DeadLetter(
                    topic="devices/esp-01/telemetry",
                    payload=b'{"temp": NaN}',
                    reason=RejectReason.NON_FINITE_NUMBER,
                    detail="temp is NaN",
                    received_us=T0,
                    device_id="esp-01",
                    profile="native",
                )
            ]
        )
    )

    assert result.dead_letters == 1
    [row] = await store.list_dead_letters(limit=10, before_id=None, reason=None, device_id=None)
    assert row == DeadLetterRow(
        id=row.id,
        received_us=T0,
        topic="devices/esp-01/telemetry",
        reason="non_finite_number",
        detail="temp is NaN",
        payload=b'{"temp": NaN}',
        size=13,
        device_id="esp-01",
        profile="native",
    )


async def test_raw_bytes_kept_exactly(store: Store) -> None:
    """Non-UTF-8, NUL-bearing and empty payloads come back byte for byte."""
    payloads = [b"\xff\xfe\x00\x80garbage\x00", bytes(range(256)), b""]
    await store.write_batch(
        WriteBatch(dead_letters=[letter(i, payload=p) for i, p in enumerate(payloads)])
    )

    rows = await all_letters(store)
    assert [(r.payload, r.size) for r in reversed(rows)] == [(p, len(p)) for p in payloads]


async def test_oversize_payload_truncated_with_true_size(store: Store) -> None:
    """Payloads over 64 KiB keep their first 64 KiB and their real size; 64 KiB itself fits."""
    big = bytes(i % 251 for i in range(200_000))
    exact = b"\x01" * MAX_KEPT_BYTES
    await store.write_batch(
        WriteBatch(dead_letters=[letter(0, payload=big), letter(1, payload=exact)])
    )

    exact_row, big_row = await all_letters(store)
    assert (big_row.payload, big_row.size) == (big[:MAX_KEPT_BYTES], 200_000)
    assert (exact_row.payload, exact_row.size) == (exact, MAX_KEPT_BYTES)


async def test_newest_first_with_before_id_cursor(store: Store) -> None:
    """Pages of 10 over 25 letters from three batches: newest first, complete, no repeats."""
    for start in (0, 10, 20):
        await store.write_batch(
            WriteBatch(dead_letters=[letter(n) for n in range(start, min(start + 10, 25))])
        )

    rows = await all_letters(store, page=10)

    assert [r.detail for r in rows] == [f"letter {n}" for n in reversed(range(25))]
    ids = [r.id for r in rows]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 25
    assert (
        await store.list_dead_letters(limit=10, before_id=min(ids), reason=None, device_id=None)
        == []
    )


async def test_reason_and_device_filters(store: Store) -> None:
    """Filters by reason, by device, both, and combined with the cursor."""
    letters = [
        letter(n, reason="malformed_json" if n % 2 else "missing_field", device_id=f"d{n % 3}")
        for n in range(30)
    ]
    letters.append(letter(30, reason="unknown_topic"))
    await store.write_batch(WriteBatch(dead_letters=letters))

    def expect(keep: list[DeadLetter]) -> list[str]:
        return [d.detail for d in reversed(keep)]

    by_reason = await all_letters(store, page=4, reason="missing_field")
    assert [r.detail for r in by_reason] == expect(
        [d for d in letters if d.reason == "missing_field"]
    )
    by_device = await all_letters(store, page=3, device_id="d1")
    assert [r.detail for r in by_device] == expect([d for d in letters if d.device_id == "d1"])
    both = await all_letters(store, page=2, reason="malformed_json", device_id="d2")
    assert [r.detail for r in both] == expect(
        [d for d in letters if d.reason == "malformed_json" and d.device_id == "d2"]
    )
    assert [r.detail for r in await all_letters(store, reason="unknown_topic")] == ["letter 30"]
    assert await all_letters(store, reason="no_such_reason") == []
    assert await all_letters(store, device_id="nobody") == []
