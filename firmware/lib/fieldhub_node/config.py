"""Node configuration: defaults, validation with messages written for humans, device id.

The site configuration (WiFi, broker, pins) lives in `config.json` on the device's filesystem,
never in this library (as in mqtt_as): one firmware image serves every site. `validate` returns a
complete, normalised copy or raises ConfigError listing every problem at once, so a person editing
the file fixes it in one round instead of one reboot per mistake.
"""

from fieldhub_node.jsonutil import is_number

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass

SENSOR_TYPES = ("dht22", "bme280", "none")
# Telemetry period bounds. Below 1 s a DHT22 returns stale values (it samples every 2 s) and the
# uplink floods; above an hour fieldhub marks the node stale long before it reports again.
MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 3600
# Ring buffer bounds for readings taken while offline. Each entry is a small dict (~200 bytes of
# heap on MicroPython): 16 is the least that bridges a broker restart, 2,000 is ~400 KB, beyond an
# ESP32-WROOM's free heap.
MIN_BUFFER_ENTRIES = 16
MAX_BUFFER_ENTRIES = 2000
# Standard hobby servos take 1000-2000 us pulses; some travel further, none outside 500-2500 us,
# and driving one beyond its end stops stalls it (it draws current and heats until it fails).
MIN_PULSE_US = 500
MAX_PULSE_US = 2500
# ESP32 GPIO numbers run 0..39 (34..39 are input-only, which the drivers refuse themselves).
MAX_PIN = 39

DEFAULTS: dict[str, Any] = {
    "wifi": {"ssid": "", "password": ""},
    "mqtt": {
        "host": "",
        "port": 1883,
        "user": None,
        "password": None,
        "keepalive_s": 30,
        # TLS with the broker's CA pinned (fieldhub_node/tls.py): `ca` names the CA certificate
        # file on the node's flash, DER as `fieldhub certs init` writes it (ca.der).
        "tls": False,
        "ca": "ca.der",
    },
    "device_id": None,
    "sensor": {"type": "dht22", "pin": 4, "sda": 21, "scl": 22, "address": 0x76},
    "microphone": None,
    "window": {
        "pin": 13,
        "min_pulse_us": 1000,
        "max_pulse_us": 2000,
        "min_position": 0,
        "max_position": 100,
        "initial_position": 0,
    },
    "telemetry_interval_s": 10,
    "buffer_entries": 256,
    "ntp_host": "pool.ntp.org",
}

MIC_DEFAULTS: dict[str, Any] = {"sck": 14, "ws": 15, "sd": 32, "sample_rate": 16000, "bits": 32}


class ConfigError(ValueError):
    """config.json is unusable; `problems` lists every reason, one human sentence each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("config.json: " + "; ".join(problems))
        self.problems = problems


def _merge(defaults: dict[str, Any], given: Any, where: str, problems: list[str]) -> dict[str, Any]:
    out = {}
    for key in defaults:
        out[key] = defaults[key]
    if given is None:
        return out
    if not isinstance(given, dict):
        problems.append(where + " must be an object")
        return out
    for key in given:
        if key not in defaults:
            # A typo (`"pasword"`) silently ignored would cost an evening of debugging.
            problems.append("unknown setting " + where + "." + str(key))
        else:
            out[key] = given[key]
    return out


def _int(section: dict[str, Any], key: str, where: str, low: int, high: int, problems: list[str]) -> None:
    value = section[key]
    if not is_number(value) or int(value) != value:
        problems.append("%s.%s must be a whole number, got %r" % (where, key, value))
    elif not low <= value <= high:
        problems.append("%s.%s must be %d..%d, got %r" % (where, key, low, high, value))
    else:
        section[key] = int(value)


def _text(section: dict[str, Any], key: str, where: str, problems: list[str], optional: bool = False, max_len: int = 64) -> None:
    value = section[key]
    if optional and value is None:
        return
    if not isinstance(value, str):
        problems.append("%s.%s must be a string, got %r" % (where, key, value))
    elif len(value) > max_len:
        problems.append("%s.%s is longer than %d characters" % (where, key, max_len))


def validate(raw: Any) -> dict[str, Any]:
    """A complete configuration from the parsed config.json, or ConfigError naming every problem.

    WiFi credentials may be empty (the node then opens its setup portal, see `needs_portal`);
    everything else must be usable as written.
    """
    problems = []  # type: list[str]
    if not isinstance(raw, dict):
        raise ConfigError(["the file must hold a JSON object"])
    top = _merge(DEFAULTS, raw, "config", problems)
    wifi = _merge(DEFAULTS["wifi"], top["wifi"], "wifi", problems)
    _text(wifi, "ssid", "wifi", problems, max_len=32)  # 802.11 limits an SSID to 32 bytes
    _text(wifi, "password", "wifi", problems, max_len=64)  # WPA2 passphrases are 8..63
    mqtt = _merge(DEFAULTS["mqtt"], top["mqtt"], "mqtt", problems)
    _text(mqtt, "host", "mqtt", problems, max_len=253)
    _int(mqtt, "port", "mqtt", 1, 65535, problems)
    _text(mqtt, "user", "mqtt", problems, optional=True)
    _text(mqtt, "password", "mqtt", problems, optional=True, max_len=128)
    # Below 5 s the broker drops a node during a slow sensor read; above 5 min a dead node stays
    # `online` for minutes (the will fires at 1.5x keepalive).
    _int(mqtt, "keepalive_s", "mqtt", 5, 300, problems)
    # `is`, not `in (True, False)`: 1 == True, and a 1 in the file is a mistake worth naming.
    if mqtt["tls"] is not True and mqtt["tls"] is not False:
        problems.append("mqtt.tls must be true or false, got %r" % (mqtt["tls"],))
    _text(mqtt, "ca", "mqtt", problems)
    if isinstance(mqtt["ca"], str) and not mqtt["ca"]:
        problems.append("mqtt.ca must name the CA certificate file (e.g. ca.der)")
    if wifi["ssid"] and not mqtt["host"]:
        problems.append("mqtt.host is required (the broker's address, e.g. 192.168.1.10)")
    device_id = top["device_id"]
    if device_id is not None:
        if not isinstance(device_id, str) or not device_id:
            problems.append("device_id must be a non-empty string or null (null: the MAC)")
        elif len(device_id) > 64 or "/" in device_id or "+" in device_id or "#" in device_id:
            problems.append("device_id must be 1..64 characters without '/', '+' or '#'")
    sensor = _merge(DEFAULTS["sensor"], top["sensor"], "sensor", problems)
    if sensor["type"] not in SENSOR_TYPES:
        problems.append("sensor.type must be one of %s, got %r" % (", ".join(SENSOR_TYPES), sensor["type"]))
    for key in ("pin", "sda", "scl"):
        _int(sensor, key, "sensor", 0, MAX_PIN, problems)
    # BME280: 0x76 with SDO to ground, 0x77 with SDO to VCC; no other address exists.
    if sensor["address"] not in (0x76, 0x77):
        problems.append("sensor.address must be 118 (0x76) or 119 (0x77), got %r" % (sensor["address"],))
    mic = None
    if top["microphone"] is not None:
        mic = _merge(MIC_DEFAULTS, top["microphone"], "microphone", problems)
        for key in ("sck", "ws", "sd"):
            _int(mic, key, "microphone", 0, MAX_PIN, problems)
        _int(mic, "sample_rate", "microphone", 8000, 48000, problems)
        if mic["bits"] not in (16, 32):
            problems.append("microphone.bits must be 16 or 32, got %r" % (mic["bits"],))
    window = _merge(DEFAULTS["window"], top["window"], "window", problems)
    _int(window, "pin", "window", 0, MAX_PIN, problems)
    _int(window, "min_pulse_us", "window", MIN_PULSE_US, MAX_PULSE_US, problems)
    _int(window, "max_pulse_us", "window", MIN_PULSE_US, MAX_PULSE_US, problems)
    for key in ("min_position", "max_position", "initial_position"):
        _int(window, key, "window", 0, 100, problems)
    if not problems:
        if window["min_pulse_us"] >= window["max_pulse_us"]:
            problems.append("window.min_pulse_us must be below window.max_pulse_us")
        if window["min_position"] > window["max_position"]:
            problems.append("window.min_position must not exceed window.max_position")
    _int(top, "telemetry_interval_s", "config", MIN_INTERVAL_S, MAX_INTERVAL_S, problems)
    _int(top, "buffer_entries", "config", MIN_BUFFER_ENTRIES, MAX_BUFFER_ENTRIES, problems)
    _text(top, "ntp_host", "config", problems, max_len=253)
    if problems:
        raise ConfigError(problems)
    top["wifi"] = wifi
    top["mqtt"] = mqtt
    top["sensor"] = sensor
    top["microphone"] = mic
    top["window"] = window
    return top


def needs_portal(config: dict[str, Any]) -> bool:
    """True when no WiFi network is configured: the node opens its setup access point instead."""
    return not config["wifi"]["ssid"]


def device_id_from_mac(mac: bytes) -> str:
    """`3C:E9:0E:72:12:4C`: the spelling fieldhub canonicalises MAC ids to (docs/protocol.md).

    Using the canonical form on the device too keeps one topic per device: fieldhub sends commands
    to `devices/<canonical id>/commands`, which is then exactly what the node subscribes to.
    """
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes, got %d" % len(mac))
    return ":".join("%02X" % b for b in mac)


def device_id(config: dict[str, Any], mac: bytes) -> str:
    """The configured device id, or the MAC-derived one when none is set."""
    configured = config["device_id"]
    if configured:
        return str(configured)
    return device_id_from_mac(mac)
