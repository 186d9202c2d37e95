"""Device ids: MAC spellings become one canonical id, other ids are validated and kept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldhub.protocol.ids import MAX_DEVICE_ID_CHARS, InvalidDeviceId, canonical_device_id, is_mac

CANONICAL = "3C:E9:0E:72:12:4C"


@pytest.mark.parametrize(
    "spelling",
    [
        "3C:E9:0E:72:12:4C",
        "3c:e9:0e:72:12:4c",
        "3c-e9-0e-72-12-4c",
        "3C-E9-0E-72-12-4C",
        "3CE90E72124C",
        "3ce90e72124c",
        "3ce9.0e72.124c",
        "3CE9.0E72.124C",
    ],
)
def test_every_mac_spelling_is_canonicalised(spelling: str) -> None:
    """Colon, dash, bare and Cisco-dotted MACs in any case give upper case with colons."""
    assert is_mac(spelling)
    assert canonical_device_id(spelling) == CANONICAL


@pytest.mark.parametrize(
    "raw",
    ["3C:E9-0E:72:12:4C", "3C-E9:0E-72:12-4C", "3C:E9:0E:72:12-4C", "3ce9.0e72-124c"],
)
def test_mixed_separators_are_not_a_mac(raw: str) -> None:
    """A MAC-like id with mixed separators is not read as a MAC, so it is not rewritten."""
    assert not is_mac(raw)
    assert canonical_device_id(raw) == raw


@pytest.mark.parametrize(
    "raw",
    ["3C:E9:0E:72:12", "3C:E9:0E:72:12:4C:00", "3CE90E72124", "3CE90E72124C0", "3G:E9:0E:72:12:4C"],
)
def test_wrong_length_or_digits_are_not_a_mac(raw: str) -> None:
    """Too few or too many octets, or a non-hex digit, are plain ids, not MACs."""
    assert not is_mac(raw)
    assert canonical_device_id(raw) == raw


@pytest.mark.parametrize(
    "raw", ["esp32_01", "Node-042", "tenant.site.node-042", "user@host", "a~b", "X"]
)
def test_plain_ids_are_kept_with_their_case(raw: str) -> None:
    """Ids that are not MACs come back exactly as written, case included."""
    assert canonical_device_id(raw) == raw


def test_plain_id_at_the_length_limit_is_accepted() -> None:
    """An id of exactly MAX_DEVICE_ID_CHARS characters is valid."""
    raw = "n" * MAX_DEVICE_ID_CHARS
    assert canonical_device_id(raw) == raw


def test_empty_id_is_rejected() -> None:
    """An empty id segment (`devices//telemetry`) names no device."""
    with pytest.raises(InvalidDeviceId, match="empty"):
        canonical_device_id("")


def test_too_long_id_is_rejected_with_the_limit() -> None:
    """One character over the limit is refused, and the message gives length and limit."""
    with pytest.raises(InvalidDeviceId, match=rf"{MAX_DEVICE_ID_CHARS + 1}.*{MAX_DEVICE_ID_CHARS}"):
        canonical_device_id("n" * (MAX_DEVICE_ID_CHARS + 1))


@pytest.mark.parametrize(
    "raw",
    [
        "+",
        "#",
        "node+1",
        "node#",
        "a b",
        " node",
        "node\t",
        "a/b",
        "node\n",
        "ab\n",
        "n\u00e9",
        '"q"',
        "a,b",
        "a\x00",
    ],
)
def test_ids_with_wildcards_space_slash_or_controls_are_rejected(raw: str) -> None:
    """Wildcards, whitespace (a trailing newline included), slashes and non-ASCII are refused."""
    with pytest.raises(InvalidDeviceId, match="characters outside"):
        canonical_device_id(raw)


def test_mac_with_trailing_newline_is_not_a_mac() -> None:
    """`$` in a regex matches before a final newline; the id check must not."""
    assert not is_mac(CANONICAL + "\n")
    assert not is_mac("3CE90E72124C\n")
    with pytest.raises(InvalidDeviceId):
        canonical_device_id(CANONICAL + "\n")


_mac_octets = st.lists(st.integers(0, 255), min_size=6, max_size=6)


@given(_mac_octets, st.sampled_from([":", "-", "", "."]), st.booleans())
def test_any_mac_spelling_gives_the_colon_form(octets: list[int], sep: str, upper: bool) -> None:
    """Generated MACs in every spelling canonicalise to the same upper-case colon form."""
    digits = "".join(f"{o:02x}" for o in octets)
    if sep == ".":
        raw = ".".join(digits[i : i + 4] for i in range(0, 12, 4))
    else:
        raw = sep.join(digits[i : i + 2] for i in range(0, 12, 2))
    raw = raw.upper() if upper else raw
    assert canonical_device_id(raw) == ":".join(f"{o:02X}" for o in octets)


_id_text = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF:-.", max_size=20),
    st.text(alphabet="abcXYZ019_.:@~-", min_size=1, max_size=MAX_DEVICE_ID_CHARS + 2),
    st.text(max_size=20),
)


@given(_id_text)
def test_canonical_device_id_is_idempotent(raw: str) -> None:
    """Canonicalising a canonical id changes nothing; refused ids stay refused."""
    try:
        once = canonical_device_id(raw)
    except InvalidDeviceId:
        return
    assert canonical_device_id(once) == once
    assert 1 <= len(once) <= MAX_DEVICE_ID_CHARS
