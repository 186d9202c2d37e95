"""Device-only glue: the clock, WiFi, NTP and the umqtt.simple transport of the node.

Quirks learned from the field (as mqtt_as collects them), each where it is handled:
* `ticks_ms` wraps (at 2**30 on the ESP32): `Clock` extends it into a count that never wraps;
* `time.time()` counts from 2000 on MicroPython ports before 1.22 and from 1970 after;
* umqtt.simple blocks in `publish(qos=1)` until the PUBACK, and raises OSError when the
  connection broke: that is our delivery report to the core;
* umqtt.robust reconnects by itself but then cannot keep a last will working
  (docs/field-notes.md, "MicroPython"),
  so we reconnect ourselves with the will set on every CONNECT;
* umqtt.simple raises MQTTException (not OSError) when the broker refuses the CONNECT (wrong
  credentials, a revoked device): caught like a network error, or one refusal would end the loop;
* TLS (`mqtt.tls`) takes an `ssl.SSLContext` for umqtt.simple's `ssl` argument, which
  MicroPython 1.23 introduced (1.22's took `ssl=True, ssl_params={...}`).
"""

import time

import network
import ntptime
from fieldhub_node.config import ConfigError
from fieldhub_node.tls import client_context
from umqtt.simple import MQTTClient, MQTTException

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass

# Seconds between 1970-01-01 and 2000-01-01: added when the port's epoch is 2000.
EPOCH_2000_S = 946_684_800
# Before NTP answered, the RTC says 2000 (or 1970): any time before 2021 means "not synced".
SYNCED_AFTER_S = 1_609_459_200
# WiFi must stay up this long before MQTT connects (mqtt_as: a link that just came up often drops
# again within seconds on ESP32, and a CONNECT on it wastes a broker timeout).
WIFI_SETTLE_MS = 5000
WIFI_CONNECT_TIMEOUT_MS = 20000
# Reconnect backoff: quick after a blip, at most a minute so a dead broker is not hammered.
RECONNECT_MIN_MS = 1000
RECONNECT_MAX_MS = 60000
# NTP again every hour: the ESP32's RTC drifts a few seconds a day.
NTP_RESYNC_MS = 3_600_000
# CONNACK return codes (MQTT 3.1.1, 3.2.2.3) a person can act on, in words for the console.
CONNACK_REFUSALS = {
    2: "client id refused",
    4: "bad username or password",
    5: "not authorized (unknown or revoked device credentials)",
}


class Clock:
    """Monotonic milliseconds since boot that never wrap, and epoch ms once NTP set the RTC."""

    def __init__(self) -> None:
        self._last = time.ticks_ms()
        self._ms = 0
        self._epoch_offset_s = EPOCH_2000_S if time.gmtime(0)[0] == 2000 else 0

    def now_ms(self) -> int:
        now = time.ticks_ms()
        self._ms += time.ticks_diff(now, self._last)
        self._last = now
        return self._ms

    def epoch_ms(self) -> int | None:
        seconds = time.time() + self._epoch_offset_s
        if seconds < SYNCED_AFTER_S:
            return None
        return (time.time_ns() // 1_000_000) + self._epoch_offset_s * 1000


def wifi_connect(ssid: str, password: str) -> Any:
    """Join the network (blocking up to WIFI_CONNECT_TIMEOUT_MS), then let the link settle."""
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(ssid, password)
        start = time.ticks_ms()
        while not wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), start) > WIFI_CONNECT_TIMEOUT_MS:
                raise OSError("WiFi %r did not connect" % ssid)
            time.sleep_ms(100)
    time.sleep_ms(WIFI_SETTLE_MS)
    return wlan


def ntp_sync(host: str) -> bool:
    """Set the RTC from NTP; False (not fatal) when the server does not answer."""
    ntptime.host = host
    try:
        ntptime.settime()
    except (OSError, OverflowError):
        return False
    return True


def rssi(wlan: Any) -> int | None:
    try:
        return int(wlan.status("rssi"))
    except (OSError, ValueError):
        return None


class Transport:
    """umqtt.simple with the node's will, QoS 1 publishes reported back, and backoff."""

    def __init__(self, device_id: str, mqtt_config: dict[str, Any], will_topic: str, will: bytes) -> None:
        options = {
            "port": mqtt_config["port"],
            "user": mqtt_config["user"],
            "password": mqtt_config["password"],
            "keepalive": mqtt_config["keepalive_s"],
        }  # type: dict[str, Any]
        if mqtt_config["tls"]:
            options["ssl"] = tls_context(mqtt_config["ca"])
        self._client = MQTTClient(device_id, mqtt_config["host"], **options)
        self._client.set_last_will(will_topic, will, retain=True, qos=1)
        self.connected = False
        self._retry_at_ms = 0
        self._backoff_ms = RECONNECT_MIN_MS
        self._last_ping_ms = 0
        self._keepalive_ms = mqtt_config["keepalive_s"] * 1000

    def try_connect(self, now_ms: int, commands_topic: str, on_message: Any) -> bool:
        """Connect (clean session) and subscribe if the backoff allows; True when connected."""
        if self.connected or now_ms < self._retry_at_ms:
            return self.connected
        try:
            self._client.set_callback(on_message)
            self._client.connect(clean_session=True)
            self._client.subscribe(commands_topic, qos=1)
        except (OSError, MQTTException) as exc:
            # A TLS failure is an OSError with mbedTLS's code: -9984 (X509 verify failed) means
            # the broker's certificate is not from the pinned CA or does not name mqtt.host.
            reason = exc  # type: Any
            if isinstance(exc, MQTTException) and exc.args and exc.args[0] in CONNACK_REFUSALS:
                reason = "broker refused: " + CONNACK_REFUSALS[exc.args[0]]
            print("mqtt: connect failed:", reason, "- retry in", self._backoff_ms, "ms")
            self.lost()
            self._retry_at_ms = now_ms + self._backoff_ms
            self._backoff_ms = min(RECONNECT_MAX_MS, self._backoff_ms * 2)
            return False
        self.connected = True
        self._backoff_ms = RECONNECT_MIN_MS
        self._last_ping_ms = now_ms
        return True

    def publish(self, topic: str, payload: bytes, retain: bool) -> bool:
        """QoS 1 publish, blocking until the PUBACK; False when the connection broke."""
        try:
            self._client.publish(topic, payload, retain=retain, qos=1)
        except OSError:
            self.lost()
            return False
        return True

    def poll(self, now_ms: int) -> bool:
        """Deliver waiting commands (through the callback) and keep the connection alive;
        returns whether still connected."""
        try:
            self._client.check_msg()
            if now_ms - self._last_ping_ms > self._keepalive_ms // 2:
                self._client.ping()
                self._last_ping_ms = now_ms
        except OSError:
            self.lost()
        return self.connected

    def lost(self) -> None:
        self.connected = False
        try:
            self._client.sock.close()
        except (OSError, AttributeError):
            pass

    def disconnect(self) -> None:
        try:
            self._client.disconnect()
        except OSError:
            pass
        self.connected = False


def tls_context(ca_path: str) -> Any:
    """The pinned-CA context for `mqtt.tls`; ConfigError (shown on the console) without the CA."""
    try:
        with open(ca_path, "rb") as f:
            cadata = f.read()
    except OSError:
        raise ConfigError(
            ["mqtt.tls is on but the CA file %r is not on the node: copy it with "
             "`mpremote cp <certs dir>/ca.der :%s` (fieldhub certs init wrote it)" % (ca_path, ca_path)]
        ) from None
    try:
        return client_context(cadata)
    except (ValueError, OSError) as exc:
        raise ConfigError(["mqtt.ca %r: %s" % (ca_path, exc)]) from None
