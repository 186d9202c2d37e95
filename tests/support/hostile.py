"""A fixed-seed corpus of hostile MQTT messages: what a hostile-input probe of a fresh install sent
(issue 18), kept so a test and the soak bench replay exactly the same bytes every time.

Every message goes to a topic under one of the built-in profiles' subscriptions (docs/protocol.md,
`protocol/profiles.py`), so fieldhub receives each one and must account for it: stored, a dead
letter, or one of ingest's other outcomes. Topics hold no control characters and no NUL: Mosquitto
refuses such a PUBLISH and drops the client's connection (MQTT 3.1.1 4.7.3), so they never reach
fieldhub; control characters go into payloads (field names, values, ids inside JSON) instead. The
same holds for a topic of more than 200 levels (Mosquitto's `TOPIC_HIERARCHY_LIMIT`): the long
topics stay under it.

`hostile_corpus()` is pure and deterministic: the same seed gives the same list, byte for byte.
The random-device flood comes last, so the new-device budget it exhausts is not what refuses the
other kinds' devices (a test that lowers `FIELDHUB_NEW_DEVICES_PER_HOUR` relies on that order).
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections import Counter
from collections.abc import Iterator
from typing import NamedTuple

import orjson

__all__ = ["HostileMessage", "corpus_summary", "hostile_corpus"]

SEED = 18
# The probe's figures: 60,022-character topics, 60 KB attributes, ~10,000 messages in all.
LONG_TOPIC_CHARS = 60_000
ATTRIBUTE_BOMB_CHARS = 60_000
NEST_DEPTHS = (900, 1_000, 1_025, 5_000)
# Random device ids by the thousand: above a lowered new-device budget, below the default 10,000.
FLOOD_DEVICES = 3_000
# Random metric names by the hundred per device: six messages of 100 new names cross the
# 500-metrics-per-device bound on the sixth.
METRIC_DEVICES = 20
METRICS_PER_MESSAGE = 100
METRIC_MESSAGES_PER_DEVICE = 6
# 80 new 60 KB keys on one device: past the 64-keys bound and the 256-character bound.
ATTRIBUTE_BOMB_MESSAGES = 80
# Fuzz (mutated valid payloads on every route) fills the corpus up to this many messages.
TOTAL_MESSAGES = 10_000
FUZZ_DEVICES = 40

# Where each stack's device id goes: (pattern with `{id}`, kind of payload it expects).
JSON_ROUTES = (
    "devices/{id}/telemetry",
    "devices/{id}/data",
    "devices/{id}/status",
    "devices/{id}/commands/ack",
    "/readings/gateway/{id}",
    "/readings/temperature/{id}",
    "iot/node/{id}/telemetry",
    "iot/node/{id}/status",
    "sensor/{id}/audio",
    "window/{id}/control",
    "ml/inference/request/{id}",
)
TEXT_ROUTES = ("sensor/{id}/temperature", "sensor/{id}/humidity")
IGNORED_ROUTES = (
    "devices/{id}/commands",
    "devices/{id}/audio",
    "devices/{id}/ota",
    "iot/node/{id}/command",
)
# Under a profile's subscription but matching none of its routes: an unknown_topic dead letter.
UNROUTED = ("devices/{id}/nope", "iot/node/{id}", "sensor/{id}/pressure/x", "/readings/other/{id}")
ALL_ROUTES = JSON_ROUTES + TEXT_ROUTES + IGNORED_ROUTES + UNROUTED
# Names the wide export layout uses for its key columns (docs/api.md): as metric names.
KEY_COLUMN_NAMES = ("ts", "t", "time", "device", "device_id", "metric", "value", "id", "uid")


class HostileMessage(NamedTuple):
    """One message of the corpus: where it goes, its bytes, and which probe case it stands for."""

    topic: str
    payload: bytes
    kind: str


def _valid_payload(route: str, rng: random.Random, ts_ms: int) -> bytes:
    """A payload each route accepts (the fuzz mutates these)."""
    t = round(rng.uniform(15, 30), 2)
    if route in TEXT_ROUTES:
        return f"{t}".encode()
    if route.startswith("/readings/gateway"):
        return b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":93387, "rssi":65}'
    if route.startswith("/readings/temperature"):
        return b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":93387, "temperature":%.1f}' % t
    if route.startswith("iot/node"):
        return orjson.dumps(
            {"node_id": "n", "timestamp": ts_ms // 1000, "sensors": {"temperature": t}}
        )
    if route == "sensor/{id}/audio":
        return orjson.dumps({"data": _wav_b64(rng), "sample_rate": 8000, "duration": 0.01})
    if route.startswith("window/"):
        return orjson.dumps({"device_id": "w", "timestamp": ts_ms, "position": 50})
    if route.startswith("ml/"):
        return orjson.dumps({"device_id": "m", "temperature": t, "humidity": 40})
    if route.endswith("commands/ack"):
        return orjson.dumps({"id": "c-1", "status": "ok"})
    if route.endswith("status"):
        return b"online"
    return orjson.dumps({"ts": ts_ms, "temperature": t, "humidity": 40.0})


def _wav_b64(rng: random.Random) -> str:
    """A tiny valid WAV (80 frames of 8 kHz 16-bit mono noise), base64."""
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(rng.getrandbits(8) for _ in range(160)))
    return base64.b64encode(buf.getvalue()).decode()


def _nested(depth: int, leaf: bytes = b"1") -> bytes:
    """`depth` levels of objects, alternating with arrays so both decoders' paths are hit."""
    opens, closes = [], []
    for level in range(depth):
        if level % 2:
            opens.append(b"[")
            closes.append(b"]")
        else:
            opens.append(b'{"a":')
            closes.append(b"}")
    return b"".join(opens) + leaf + b"".join(reversed(closes))


def _rand_id(rng: random.Random, n: int = 10) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def _mutate(payload: bytes, rng: random.Random) -> bytes:
    """One random corruption of a payload: truncate, flip, splice junk, duplicate, wrap."""
    choice = rng.randrange(7)
    if choice == 0 and payload:
        return payload[: rng.randrange(len(payload))]
    if choice == 1 and payload:
        data = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if choice == 2:
        at = rng.randrange(len(payload) + 1)
        junk = rng.choice([b"\x00", b"\xff\xfe", b'"', b"{", b"]", b"NaN", b"\x1b[31m", b"\\u0000"])
        return payload[:at] + junk + payload[at:]
    if choice == 3:
        return payload * rng.randint(2, 5)
    if choice == 4:
        return b"[" + payload + b"]"
    if choice == 5:
        return rng.randbytes(rng.randint(1, 200))
    return orjson.dumps(
        {rng.choice((*KEY_COLUMN_NAMES, "temperature", "x" * 200, "")): rng.random()}
    )


def _cases(rng: random.Random, now_ms: int) -> Iterator[HostileMessage]:
    """Every probe case except the random-device flood and the fuzz."""
    hm = HostileMessage
    # Oversize payloads on every route (the audio route's bound is 512 KiB: over that too).
    for i, route in enumerate(ALL_ROUTES):
        dev = f"big-{i:02d}"
        yield hm(route.format(id=dev), b"{" + b" " * (65 * 1024) + b"}", "oversize_payload")
        yield hm(route.format(id=dev), rng.randbytes(70_000), "oversize_payload")
    yield hm("sensor/big-audio/audio", b'{"data":"' + b"A" * 600_000 + b'"}', "oversize_payload")
    yield hm("devices/big-mib/telemetry", b"7" * (1024 * 1024), "oversize_payload")

    # 60,000-character topics: the id level, a level after it, and every prefix.
    for pattern in ("devices/{id}/telemetry", "iot/node/{id}/status", "sensor/{id}/humidity"):
        yield hm(pattern.format(id="L" * LONG_TOPIC_CHARS), b'{"t":1}', "long_topic")
    yield hm("devices/x/" + "y" * LONG_TOPIC_CHARS, b'{"t":1}', "long_topic")
    # Many levels, but under Mosquitto's 200 (a deeper topic drops the publisher's connection).
    levels = "/".join(["a" * 399] * 150)
    yield hm("/readings/gateway/" + levels, b"{}", "long_topic")
    yield hm("window/" + "w" * LONG_TOPIC_CHARS + "/control", b"{}", "long_topic")

    # Deep nesting on every JSON route, at the depths that used to crash the decoders.
    for depth in NEST_DEPTHS:
        for i, route in enumerate(JSON_ROUTES):
            yield hm(route.format(id=f"deep-{i:02d}"), _nested(depth), f"nested_{depth}")
            if route == "devices/{id}/telemetry":
                wrapped = b'{"ts":%d,"deep":' % now_ms + _nested(depth) + b"}"
                yield hm(route.format(id="deep-wrapped"), wrapped, f"nested_{depth}")

    # Key-column names as metrics ({"ts": true, "t": 1} broke the default export).
    yield hm("devices/keycols/telemetry", b'{"ts": true, "t": 1}', "key_column_metric")
    for n, name in enumerate(KEY_COLUMN_NAMES):
        payload = orjson.dumps({"ts": now_ms - 1000 + n, name: n + 0.5, "temperature": 20.0})
        yield hm("devices/keycols/telemetry", payload, "key_column_metric")
        yield hm(
            "iot/node/keycols/telemetry",
            orjson.dumps({"timestamp": now_ms // 1000 - n, "sensors": {name: n}}),
            "key_column_metric",
        )

    # Device ids that must not register, on every profile's id level.
    bad_ids = [
        "..",
        ".",
        "...",
        "%2e%2e",
        "a b",
        "é",
        "dev\u200bice",
        "x" * 129,
        "x" * 1_000,
        "null",
        "CON",
        "~",
        "-",
        "'; DROP TABLE devices; --",
        "<script>",
    ]
    for device in bad_ids:
        for route in (
            "devices/{id}/telemetry",
            "iot/node/{id}/telemetry",
            "/readings/gateway/{id}",
        ):
            yield hm(route.format(id=device), _valid_payload(route, rng, now_ms), "bad_device_id")
        yield hm(f"sensor/{device}/temperature", b"21.5", "bad_device_id")
        yield hm(f"window/{device}/control", b'{"position": 1}', "bad_device_id")
    # Empty id levels.
    for topic in ("devices//telemetry", "/readings/gateway/", "sensor//humidity"):
        yield hm(topic, b'{"t": 1}', "bad_device_id")

    # Control characters inside payloads: names, values, ids in the JSON.
    for c in [*range(32), 127]:
        ch = chr(c)
        yield hm(
            "devices/ctrl/telemetry",
            orjson.dumps({f"m{ch}x": 1.0, "note": f"a{ch}b"}),
            "control_characters",
        )
        yield hm(
            "devices/ctrl/data",
            orjson.dumps({"node_id": f"n{ch}", "status": f"s{ch}", "temperature": 20}),
            "control_characters",
        )

    # Very long names and values.
    yield hm("devices/longname/telemetry", orjson.dumps({"m" * 5_000: 1}), "long_name")
    yield hm("devices/longname/telemetry", orjson.dumps({"s": "v" * 50_000}), "long_value")

    # Random metric names by the hundred per device: the sixth message crosses 500 metrics.
    for d in range(METRIC_DEVICES):
        for m in range(METRIC_MESSAGES_PER_DEVICE):
            fields: dict[str, object] = {"ts": now_ms - 10_000 + m}
            for _ in range(METRICS_PER_MESSAGE):
                fields[f"m_{_rand_id(rng, 12)}"] = rng.random()
            yield hm(f"devices/metrics-{d:02d}/telemetry", orjson.dumps(fields), "metric_names")

    # 60 KB string attributes under new keys: past 64 keys and 256 characters.
    for k in range(ATTRIBUTE_BOMB_MESSAGES):
        payload = orjson.dumps({f"attr_{k:03d}": rng.choice("abc") * ATTRIBUTE_BOMB_CHARS})
        yield hm("devices/attr-bomb/telemetry", payload, "attribute_bomb")
    for k in range(20):
        payload = orjson.dumps({"status": "z" * ATTRIBUTE_BOMB_CHARS, "temperature": k})
        yield hm("devices/attr-bomb-data/data", payload, "attribute_bomb")

    # Not UTF-8, on every route.
    for route in ALL_ROUTES:
        for payload in (
            b"\xff\xfe\xfd",
            b'{"temperature": "\xc3\x28"}',
            b'{"t\xe9": 1}',
            b"\xed\xa0\x80",
            rng.randbytes(64),
        ):
            yield hm(route.format(id="utf8-bad"), payload, "not_utf8")

    # NaN and infinities, as JSON and as text.
    specials = (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"nan", b"inf")
    for value in specials:
        yield hm("sensor/nan-node/temperature", value, "non_finite")
        yield hm("devices/nan-node/telemetry", b'{"temperature": %s}' % value, "non_finite")
        yield hm(
            "iot/node/nan-node/telemetry",
            b'{"timestamp": 1704844800, "sensors": {"t": %s}}' % value,
            "non_finite",
        )
        yield hm("/readings/temperature/nan-node", b'{"temperature": %s}' % value, "non_finite")
        yield hm(
            "devices/nan-node/telemetry", b'{"ts": %s, "temperature": 1}' % value, "non_finite"
        )

    # Absurd timestamps, on each stack's time field.
    absurd: tuple[object, ...] = (
        -1,
        0,
        1,
        -(2**63) - 1,
        2**63,
        2**64,
        10**30,
        1e308,
        253402300800000,
        99999999999999999,
        "2026-13-45T25:61:61Z",
        "tomorrow",
        "",
        None,
        [],
        {},
        True,
        1.5,
    )
    for stamp in absurd:
        # The standard library writes integers of any size; orjson refuses past 64 bits.
        blob = json.dumps(stamp).encode()
        yield hm("devices/time-node/telemetry", b'{"ts": %s, "temperature": 1}' % blob, "absurd_ts")
        yield hm(
            "iot/node/time-node/telemetry",
            b'{"timestamp": %s, "sensors": {"temperature": 1}}' % blob,
            "absurd_ts",
        )
        yield hm(
            "devices/time-node/data", b'{"timestamp": %s, "temperature": 1}' % blob, "absurd_ts"
        )
        yield hm(
            "window/time-node/control", b'{"timestamp": %s, "position": 3}' % blob, "absurd_ts"
        )
        yield hm(
            "/readings/gateway/time-node",
            b'{"macAddress":"x", "timestamp":%s, "rssi":65}' % blob,
            "absurd_ts",
        )

    # Each stack's topics with broken payloads.
    broken = (
        b"",
        b"null",
        b"true",
        b"[]",
        b"[1,2,3]",
        b'"text"',
        b"{",
        b'{"a":',
        b"{}",
        b'{"temperature":"hot"}',
        b'{"rssi":null}',
        b'{"sensors":[1,2]}',
        b'{"sensors":"x"}',
        b'{"position":"open"}',
        b'{"data":123}',
        b'{"id":null,"status":7}',
        b"42",
        b"-0",
        b"1e5",
        b" ",
        b"online\x00",
        b'{"state":{"state":"online"}}',
    )
    for route in ALL_ROUTES:
        for payload in broken:
            yield hm(route.format(id="broken-node"), payload, "broken_payload")

    # Audio clips that are not WAV (or not audio at all).
    not_wav = (
        base64.b64encode(b"RIFF\x00\x00\x00\x00WAVEjunk").decode(),
        base64.b64encode(b"ID3\x03\x00" + bytes(200)).decode(),
        base64.b64encode(rng.randbytes(4_000)).decode(),
        "!!!not base64!!!",
        "",
        "A" * 40_001,
        base64.b64encode(b"RIFF" + (2**31).to_bytes(4, "little") + b"WAVEfmt ").decode(),
    )
    for n, data in enumerate(not_wav):
        for rate in (16000, 0, -1, "x", 10**12):
            payload = orjson.dumps({"data": data, "sample_rate": rate, "duration": 2.0})
            yield hm(f"sensor/audio-{n}/audio", payload, "not_wav")
    yield hm("sensor/audio-x/audio", b'{"sample_rate":16000}', "not_wav")

    # A little valid traffic in between, so the good path is exercised under the same fire.
    for n in range(200):
        route = rng.choice(JSON_ROUTES[:2] + TEXT_ROUTES + ("iot/node/{id}/telemetry",))
        yield hm(
            route.format(id=f"good-{n % 10}"),
            _valid_payload(route, rng, now_ms - 60_000 + n),
            "valid",
        )


def hostile_corpus(
    seed: int = SEED,
    *,
    total: int = TOTAL_MESSAGES,
    flood_devices: int = FLOOD_DEVICES,
    now_ms: int = 1_767_225_600_000,
) -> list[HostileMessage]:
    """The corpus: the probe's cases, fuzz up to `total` messages, then the device flood.

    `now_ms` is the "current" time the valid timestamps sit around (fixed by default: the corpus
    must not depend on the clock; 2026-01-01 is inside every plausible-time window fieldhub uses).
    """
    rng = random.Random(seed)
    messages = list(_cases(rng, now_ms))
    fuzz = max(0, total - len(messages) - flood_devices)
    for n in range(fuzz):
        route = rng.choice(ALL_ROUTES)
        device = f"fuzz-{n % FUZZ_DEVICES:02d}"
        base = _valid_payload(route, rng, now_ms - 3_600_000 + n)
        messages.append(HostileMessage(route.format(id=device), _mutate(base, rng), "fuzz"))
    for n in range(flood_devices):
        device = f"flood-{_rand_id(rng, 8)}-{n}"
        payload = orjson.dumps({"ts": now_ms - n, "temperature": round(rng.uniform(-5, 40), 1)})
        messages.append(HostileMessage(f"devices/{device}/telemetry", payload, "device_flood"))
    return messages


def corpus_summary(messages: list[HostileMessage]) -> dict[str, int]:
    """Messages per kind, and the total bytes, for logs and results."""
    counts = Counter(m.kind for m in messages)
    out = dict(sorted(counts.items()))
    out["_total_messages"] = len(messages)
    out["_total_bytes"] = sum(len(m.payload) + len(m.topic) for m in messages)
    return out
