"""Helpers for the command tests: the API calls, waiting for a command's state, and raw MQTT
clients that watch a command topic or play a native device (docs/commands.md)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx
import orjson

from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.mqtt.publisher import MqttPublisher
from support.fieldhub_process import FieldhubProcess
from support.waiting import wait_until

Json = dict[str, Any]
FINAL_STATES = frozenset({"succeeded", "failed", "timed_out", "expired", "cancelled"})
# Loopback answers in milliseconds; this only bounds how long a broken test hangs.
MQTT_DEADLINE_S = 10.0


def post_command(
    fh: FieldhubProcess, device_id: str, body: Json, *, wait_s: float | None = None
) -> httpx.Response:
    """POST /api/v1/devices/{id}/commands (with `?wait_s=` when given)."""
    params = {"wait_s": wait_s} if wait_s is not None else None
    return httpx.post(
        f"{fh.base_url}/api/v1/devices/{device_id}/commands",
        json=body,
        params=params,
        timeout=(wait_s or 0) + 10.0,
    )


def delete_command(fh: FieldhubProcess, device_id: str, command_id: str) -> httpx.Response:
    return httpx.delete(
        f"{fh.base_url}/api/v1/devices/{device_id}/commands/{command_id}", timeout=10.0
    )


def get_command(fh: FieldhubProcess, device_id: str, command_id: str) -> Json:
    response = fh.get(f"/api/v1/devices/{device_id}/commands/{command_id}")
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


def wait_state(
    fh: FieldhubProcess, device_id: str, command_id: str, state: str, *, timeout_s: float = 20.0
) -> Json:
    """The command once it is in `state`; fails early when it ends in another final state."""

    def reached() -> Json | None:
        body = get_command(fh, device_id, command_id)
        if body["state"] != state and body["state"] in FINAL_STATES:
            raise AssertionError(f"command ended {body['state']}, not {state}: {body}")
        return body if body["state"] == state else None

    found: Json = wait_until(reached, timeout_s=timeout_s, what=f"command {command_id} {state}")
    return found


def error_code(response: httpx.Response) -> str:
    """The `error.code` of an error answer."""
    code: str = response.json()["error"]["code"]
    return code


def device_json(fh: FieldhubProcess, device_id: str) -> Json | None:
    response = fh.get(f"/api/v1/devices/{device_id}")
    body: Json | None = response.json() if response.status_code == 200 else None
    return body


def wait_device(
    fh: FieldhubProcess,
    device_id: str,
    *,
    presence: str | None = None,
    command_format: str | None = None,
) -> Json:
    """The device's API body once it exists (with `presence`, and this command format)."""

    def ready() -> Json | None:
        body = device_json(fh, device_id)
        if body is None or (presence is not None and body["presence"] != presence):
            return None
        if command_format is not None:
            types = fh.get(f"/api/v1/devices/{device_id}/command-types").json()
            if types["format"] != command_format:
                return None
        return body

    found: Json = wait_until(
        ready, what=f"device {device_id} (presence {presence}, format {command_format})"
    )
    return found


class TopicRecorder:
    """A raw MQTT client subscribed (QoS 1) to one topic filter, keeping what it receives.

    Watches what fieldhub puts on the wire, or (as `RawNativeDevice`) plays a device.
    """

    def __init__(self, url: str, topic_filter: str, *, client_id: str | None = None) -> None:
        self.topic_filter = topic_filter
        self._lock = threading.Lock()
        self._messages: list[tuple[str, bytes]] = []
        self.client = MqttPublisher(
            endpoint=parse_mqtt_url(url),
            client_id=client_id or f"rec-{uuid.uuid4().hex[:10]}",
            subscriptions=[(topic_filter, 1)],
            on_message=self._received,
        )

    def start(self) -> TopicRecorder:
        self.client.start()
        assert self.client.subscribed.wait(MQTT_DEADLINE_S), (
            f"no subscription to {self.topic_filter}"
        )
        return self

    def stop(self) -> None:
        self.client.stop()

    def _received(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self._messages.append((topic, payload))
        self.on_message(topic, payload)

    def on_message(self, topic: str, payload: bytes) -> None:
        """Network thread, after the message is recorded; subclasses answer here."""

    def messages(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._messages)

    def payloads(self) -> list[Json]:
        """Every message received so far, parsed as JSON."""
        return [orjson.loads(payload) for _, payload in self.messages()]

    def ids(self, key: str = "id") -> list[Any]:
        """`key` of every message received so far (the command ids on a native topic)."""
        return [payload.get(key) for payload in self.payloads()]

    def ids_once(self, count: int, key: str = "id") -> list[Any]:
        """`ids()` once at least `count` messages arrived: this client may hear of a command a
        moment after the device it was sent to has already answered it."""
        wait_until(
            lambda: len(self.messages()) >= count,
            timeout_s=MQTT_DEADLINE_S,
            what=f"{count} messages on {self.topic_filter}",
        )
        return self.ids(key)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish QoS 1 and wait for the broker's PUBACK."""
        self.client.publish(topic, payload, qos=1, retain=retain).result(MQTT_DEADLINE_S)


Answer = Callable[[Json], Json | None]


class RawNativeDevice(TopicRecorder):
    """A paho client playing a native device: it announces its status, records each command it
    receives on `devices/{id}/commands` and answers with `answer(command)` (None: no answer)."""

    def __init__(self, url: str, device_id: str, *, answer: Answer | None = None) -> None:
        super().__init__(url, f"devices/{device_id}/commands", client_id=f"raw-{device_id}")
        self.device_id = device_id
        self.answer = answer
        self.ack_topic = f"devices/{device_id}/commands/ack"
        self.status_topic = f"devices/{device_id}/status"

    def on_message(self, topic: str, payload: bytes) -> None:
        if self.answer is None:
            return
        reply = self.answer(orjson.loads(payload))
        if reply is not None:
            # Never wait for the PUBACK here: this is the network thread that would receive it.
            self.client.publish(self.ack_topic, orjson.dumps(reply), qos=1)

    def announce(self, word: str) -> None:
        """Retained `online` / `offline` on the status topic, as the firmware does."""
        self.publish(self.status_topic, word.encode(), retain=True)

    def ack(self, body: Json) -> None:
        self.publish(self.ack_topic, orjson.dumps(body))


def ack_error(error: str) -> Answer:
    """An answer that refuses every command with `error`."""
    return lambda command: {"id": command["id"], "status": "error", "error": error}


def recorder(url: str, topic_filter: str, closing: ExitStack) -> TopicRecorder:
    """A started recorder of what is published on `topic_filter`, stopped with `closing`."""
    watcher = TopicRecorder(url, topic_filter).start()
    closing.callback(watcher.stop)
    return watcher
