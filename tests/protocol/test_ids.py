"""Device ids: MAC spellings become one canonical id, other ids are validated and kept."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.ids import (
    DEVICE_ID_PATTERN,
    MAX_DEVICE_ID_CHARS,
    InvalidDeviceId,
    canonical_device_id,
    is_mac,
)
from fieldhub.protocol.messages import Rejected, RejectReason
from fieldhub.protocol.profiles import DEFAULT_PROFILES, select_profiles

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
    ("raw", "rule"),
    [
        ("+", "'\\+' at position 0: an MQTT wildcard"),
        ("#", "'#' at position 0: an MQTT wildcard"),
        ("node+1", "at position 4: an MQTT wildcard"),
        ("node#", "at position 4: an MQTT wildcard"),
        ("a/b", "'/' at position 1: a topic level separator"),
        ("a b", "' ' at position 1: white space"),
        (" node", "at position 0: white space"),
        ("node\t", "at position 4: a control character"),
        ("node\n", "at position 4: a control character"),
        ("ab\n", "a control character"),
        ("a\x00", "'\\\\x00' at position 1: a control character"),
        ("\x1b[31m", "a control character"),
        ("a\x7f", "a control character"),
        ("n\u00e9", "outside letters, digits and _ . : @ ~ -"),
        ('"q"', "outside letters"),
        ("a,b", "outside letters"),
    ],
)
def test_each_refused_character_names_the_rule_it_breaks(raw: str, rule: str) -> None:
    """Wildcards, slashes, white space, control characters and anything else outside the id
    alphabet are refused, and the message names the character, where it is and which rule."""
    with pytest.raises(InvalidDeviceId, match=rule):
        canonical_device_id(raw)


@pytest.mark.parametrize("raw", [".", "..", "...", "." * MAX_DEVICE_ID_CHARS])
def test_ids_of_dots_alone_are_refused(raw: str) -> None:
    """`.` and `..` are path segments URLs and file paths resolve away: no device is named so."""
    with pytest.raises(InvalidDeviceId, match="only dots"):
        canonical_device_id(raw)
    assert not re.match(DEVICE_ID_PATTERN, raw)


@pytest.mark.parametrize(
    "raw",
    [
        # The four stacks' real ids (docs/protocol.md): MACs with and without separators, the
        # window-control stack's `esp32_xxxx`, the FastAPI stack's client id, iot-node's numbered
        # and named nodes, fieldhub's simulators and ids with dots inside.
        "3C:E9:0E:72:12:4C",
        "3CE90E72124C",
        "esp32_ab12",
        "ESP32-3C:E9:0E:72:12:4C",
        "01",
        "42",
        "node_01",
        "sim-0001",
        "window-01",
        "tenant.site.node-042",
        ".hidden",
        "v1.",
        "a..b",
    ],
)
def test_real_ids_pass_the_rules_and_the_api_pattern(raw: str) -> None:
    """Every id the stacks use passes, and the API's OpenAPI pattern agrees with the check."""
    assert canonical_device_id(raw)
    assert re.match(DEVICE_ID_PATTERN, raw)


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
    assert once.strip(".")
    # The API's pattern accepts exactly what the check accepts (a MAC in any spelling included).
    assert re.match(DEVICE_ID_PATTERN, raw)


@given(_id_text)
def test_the_api_pattern_refuses_what_the_check_refuses(raw: str) -> None:
    """An id the OpenAPI pattern lets through is one canonical_device_id accepts (the pattern's
    `$` also matches before a final newline, which the check then refuses: 422 either way)."""
    pattern_passes = re.match(DEVICE_ID_PATTERN, raw) and len(raw) <= MAX_DEVICE_ID_CHARS
    if pattern_passes and not raw.endswith("\n"):
        assert canonical_device_id(raw)


_EVERY_PROFILE = MessageDecoder(select_profiles(DEFAULT_PROFILES))
# One data route of each profile, `{}` where the id goes.
_ID_TOPICS = [
    "devices/{}/telemetry",
    "devices/{}/data",
    "devices/{}/status",
    "devices/{}/commands/ack",
    "/readings/gateway/{}",
    "iot/node/{}/telemetry",
    "iot/node/{}/status",
    "sensor/{}/temperature",
    "sensor/{}/audio",
    "window/{}/control",
    "ml/inference/request/{}",
]


@pytest.mark.parametrize("topic", _ID_TOPICS)
@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("..", "only dots"),
        (".", "only dots"),
        ("a\x00b", "a control character"),
        ("node\x1b", "a control character"),
        ("n" * (MAX_DEVICE_ID_CHARS + 1), f"the limit is {MAX_DEVICE_ID_CHARS}"),
        ("a b", "white space"),
        ("", "empty"),
    ],
)
def test_every_profile_refuses_a_bad_id_as_bad_device_id(topic: str, raw: str, rule: str) -> None:
    """The same id rules on every route of every profile: a dead letter bad_device_id whose
    detail names the rule broken, before the payload is looked at."""
    result = _EVERY_PROFILE.decode(topic.format(raw), b'{"t": 1}', 1_795_442_400_000_000)
    assert isinstance(result, Rejected), result
    assert result.reason is RejectReason.BAD_DEVICE_ID
    assert rule in result.detail
    assert result.profile is not None
