"""The fieldhub node's main loop on the ESP32: wires hardware to the pure core and runs it.

Everything decided is decided by `fieldhub_node.Node`; this file only reads sensors, moves the
servo, talks WiFi/NTP/MQTT and reports outcomes back (the same contract as the simulator's
src/fieldhub/sim/native.py).
"""

import json
import time

import machine
import network
from fieldhub_node.config import ConfigError, device_id, needs_portal, validate
from fieldhub_node.node import Actuate, Node, Publish, Reboot
from node_net import NTP_RESYNC_MS, Clock, Transport, ntp_sync, rssi, wifi_connect

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass

CONFIG_PATH = "config.json"
# The loop's idle sleep: commands are answered within this, and the CPU idles between.
LOOP_SLEEP_MS = 50


def load_raw_config() -> dict[str, Any]:
    try:
        with open(CONFIG_PATH) as f:
            raw: dict[str, Any] = json.load(f)
            return raw
    except OSError:
        return {}  # no file yet: the portal will write one
    except ValueError as exc:
        raise ConfigError(["config.json is not valid JSON (%s)" % exc]) from None


def make_sensors(config: dict[str, Any]) -> list[Any]:
    sensors = []  # type: list[Any]
    kind = config["sensor"]["type"]
    if kind == "dht22":
        from drivers.dht22 import Dht22

        sensors.append(Dht22(config["sensor"]["pin"]))
    elif kind == "bme280":
        from drivers.bme280 import Bme280

        s = config["sensor"]
        sensors.append(Bme280(s["sda"], s["scl"], s["address"]))
    if config["microphone"] is not None:
        from drivers.microphone import Microphone

        sensors.append(Microphone(config["microphone"]))
    return sensors


def run() -> None:
    raw = load_raw_config()
    config = validate(raw)
    mac = network.WLAN(network.STA_IF).config("mac")
    if needs_portal(config):
        import portal

        portal.run(raw, mac, CONFIG_PATH)
    from drivers.servo import Servo

    clock = Clock()
    node = Node(config, device_id(config, mac), clock.now_ms())
    servo = Servo(config["window"]["pin"])
    servo.pulse_us(node.window.pulse_us())
    sensors = make_sensors(config)
    wlan = wifi_connect(config["wifi"]["ssid"], config["wifi"]["password"])
    synced = ntp_sync(config["ntp_host"])
    last_ntp_ms = clock.now_ms()
    transport = Transport(node.device_id, config["mqtt"], node.will_topic, node.will_payload)
    print("node", node.device_id, "clock", "synced" if synced else "not synced")

    def execute(actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                ok = transport.connected and transport.publish(action.topic, action.payload, action.retain)
                if action.token is not None:
                    if ok:
                        node.on_published(action.token)
                    else:
                        node.on_publish_failed(action.token)
                if not ok and node.online:
                    node.on_disconnect()
            elif isinstance(action, Actuate):
                servo.pulse_us(action.pulse_us)
            elif isinstance(action, Reboot):
                transport.disconnect()
                machine.reset()

    def on_message(topic: bytes, payload: bytes) -> None:
        execute(node.on_message(topic.decode(), payload, clock.now_ms()))

    while True:
        now = clock.now_ms()
        if not wlan.isconnected():
            if node.online:
                node.on_disconnect()
                transport.lost()
            wlan = wifi_connect(config["wifi"]["ssid"], config["wifi"]["password"])
        if not transport.connected and transport.try_connect(now, node.commands_topic, on_message):
            execute(node.on_connect(now))
        if transport.connected and not transport.poll(now) and node.online:
            node.on_disconnect()
        if node.telemetry_due(now):
            readings = {"uptime_s": now // 1000}
            for sensor in sensors:
                readings.update(sensor.read())
            level = rssi(wlan)
            if level is not None:
                readings["rssi"] = level
            execute(node.on_reading(readings, now, clock.epoch_ms()))
        execute(node.poll(now))
        if now - last_ntp_ms > NTP_RESYNC_MS or (not synced and now - last_ntp_ms > 60_000):
            synced = ntp_sync(config["ntp_host"]) or synced
            last_ntp_ms = now
        time.sleep_ms(LOOP_SLEEP_MS)


try:
    run()
except ConfigError as exc:
    # Nothing sensible to do without a usable config: say why on the serial console, and stay
    # up so a person can fix config.json over USB (mpremote) instead of a reboot loop.
    print(exc)
