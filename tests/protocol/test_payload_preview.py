"""payload_preview: the short view of a raw payload that live dead-letter frames and the
dead-letters page show. Text when the payload is UTF-8, hex otherwise, "…" when cut."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fieldhub.protocol.payload import PREVIEW_CHARS, payload_preview


def test_short_text_is_shown_as_is() -> None:
    assert payload_preview(b'{"temperature": 21.5,') == '{"temperature": 21.5,'
    assert payload_preview("température".encode()) == "température"
    assert payload_preview(b"") == ""


def test_long_text_is_cut_at_the_limit_with_an_ellipsis() -> None:
    assert payload_preview(b"x" * 1_000) == "x" * PREVIEW_CHARS + "…"
    assert payload_preview(b"x" * PREVIEW_CHARS) == "x" * PREVIEW_CHARS
    assert payload_preview(b"x" * (PREVIEW_CHARS + 1)) == "x" * PREVIEW_CHARS + "…"
    assert payload_preview(b"x" * 100_000, limit=10) == "x" * 10 + "…"


def test_multibyte_text_is_cut_by_characters_not_bytes() -> None:
    assert payload_preview("é".encode() * 300) == "é" * PREVIEW_CHARS + "…"
    # 3-byte characters past the bytes decoded: a character cut at the end is not binary.
    assert payload_preview("€".encode() * 400) == "€" * PREVIEW_CHARS + "…"
    assert payload_preview("€".encode() * 267 + b"x") == "€" * PREVIEW_CHARS + "…"


def test_binary_is_shown_as_hex() -> None:
    assert payload_preview(b'{"t": "\xff\xfe"}') == "hex: 7b 22 74 22 3a 20 22 ff fe 22 7d"
    long = bytes(range(256)) * 4
    preview = payload_preview(long)
    assert preview == "hex: " + long[: PREVIEW_CHARS // 3].hex(" ") + " …"


def test_a_short_payload_with_an_invalid_last_byte_is_binary_not_shortened_text() -> None:
    """Nothing was cut from these payloads, so an invalid byte at their end is not a character
    split by the preview's own cut: showing "abc" for b"abc\\xff", or "" for three 0xff bytes,
    hides the very bytes that made the message a `not_utf8` dead letter."""
    assert payload_preview(b"abc\xff") == "hex: 61 62 63 ff"
    assert payload_preview(b"\xff\xff\xff") == "hex: ff ff ff"
    assert payload_preview(b'{"t": 1}\xe2\x82') == "hex: " + b'{"t": 1}\xe2\x82'.hex(" ")


@settings(max_examples=500, deadline=None)
@given(payload=st.one_of(st.binary(max_size=1_200), st.text(max_size=400).map(str.encode)))
def test_property_a_text_preview_is_the_payloads_beginning_and_says_when_it_is_cut(
    payload: bytes,
) -> None:
    """Never raises, stays short, and a text preview without "…" is the whole payload."""
    preview = payload_preview(payload)
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if preview.startswith("hex: ") and not payload.startswith(b"hex: "):
        assert text is None, "valid UTF-8 shown as hex"
        assert len(preview) <= len("hex: ") + 3 * (PREVIEW_CHARS // 3) + 2
        return
    assert len(preview) <= PREVIEW_CHARS + 1
    shown = preview.removesuffix("…")
    assert payload.startswith(shown.encode())
    if not preview.endswith("…"):
        assert shown.encode() == payload, "a preview without '…' must be the whole payload"
