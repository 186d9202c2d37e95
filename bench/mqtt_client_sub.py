"""One MQTT subscriber candidate for bench/mqtt_clients.py: receive and acknowledge QoS 1, count.

Run by the bench as ``python -m bench.mqtt_client_sub --client NAME --port P``, one process per
measured run, so each client's CPU is its own. It subscribes to the load generator's topics at
QoS 1 and reports JSON lines on stdout (bench.common.JsonLinesChild reads them):

* ``{"event": "ready"}`` once the broker confirmed the subscription (SUBACK): from then on every
  message the load generator publishes is routed to us.
* ``{"event": "progress", "received": N, "last_epoch": T}`` every ``PROGRESS_EVERY_S``: the bench
  waits for the count to reach what the broker accepted, or to stop growing.
* ``{"event": "done", ...}`` on SIGTERM: the final count, the epoch time of the last receipt and
  the client's own figures (decode rejections, acks sent).

Counting is one attribute increment and one ``time.time()`` per message, the same for every
candidate, and nothing is written per message: the subscriber's CPU is the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

# fieldhub's server runs its event loop on uvloop (a fieldhub dependency): so do these clients.
import uvloop

HOST = "127.0.0.1"
# What the loadgen publishes to: devices/<device id>/telemetry (bench/loadgen.py).
TELEMETRY_FILTER = "devices/+/telemetry"
PROGRESS_EVERY_S = 0.5
# fieldhub's writer acknowledges a batch after its commit; it commits every few milliseconds
# under load, so the acks here go out in batches this often.
ACK_EVERY_S = 0.005
# A clean disconnect after "done" may take this long before we just exit.
DISCONNECT_TIMEOUT_S = 5.0
# How often a thread-based client's main thread looks whether SIGTERM came.
STOP_POLL_S = 0.1

CLIENTS = (
    "paho-plain",
    "fieldhub",
    "fieldhub+decode",
    "gmqtt",
    "gmqtt-async",
    "aiomqtt",
)


class Reporter:
    """JSON lines on stdout from any thread, and the receipt count they report."""

    def __init__(self) -> None:
        self.received = 0
        self.last_epoch: float | None = None
        self.extra: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def hit(self) -> None:
        """One message received (called in the client's network thread or event loop)."""
        self.received += 1
        self.last_epoch = time.time()

    def emit(self, event: str, **fields: Any) -> None:
        with self._lock:
            print(json.dumps({"event": event, **fields}), flush=True)

    def start_progress(self) -> None:
        threading.Thread(target=self._progress, name="progress", daemon=True).start()

    def _progress(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY_S):
            self.emit("progress", received=self.received, last_epoch=self.last_epoch)

    def done(self) -> None:
        """The final count (before disconnecting: nothing after SIGTERM counts)."""
        self._stop.set()
        self.emit("done", received=self.received, last_epoch=self.last_epoch, **self.extra)


# --- thread-based clients (paho's network loop in its own thread) ------------------------------


def _wait_for_sigterm() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(STOP_POLL_S):
        pass


def run_paho_plain(port: int, reporter: Reporter) -> None:
    """paho-mqtt as its documentation shows it: MQTT 5, manual_ack, ack inside on_message."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="bench-paho-plain",
        protocol=paho.MQTTv5,
        manual_ack=True,
    )

    def on_connect(client: paho.Client, *_: Any) -> None:
        client.subscribe(TELEMETRY_FILTER, qos=1)

    def on_subscribe(*_: Any) -> None:
        reporter.emit("ready")

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        reporter.hit()
        client.ack(msg.mid, msg.qos)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(HOST, port, clean_start=True)
    client.loop_start()
    _wait_for_sigterm()
    reporter.done()
    client.disconnect()
    client.loop_stop()


def run_fieldhub(port: int, reporter: Reporter, *, decode: bool) -> None:
    """fieldhub's MqttSubscriber; tokens acked in batches from another thread, as the writer
    does after a commit. With `decode`, every message also goes through fieldhub's decoder in the
    network thread, as Ingest.on_message does."""
    from fieldhub.mqtt.endpoint import MqttEndpoint
    from fieldhub.mqtt.subscriber import AckToken, MqttSubscriber
    from fieldhub.protocol.decode import MessageDecoder
    from fieldhub.protocol.messages import Decoded, InboundMessage
    from fieldhub.protocol.profiles import DEFAULT_PROFILES, select_profiles

    # deque: append (network thread) and popleft (acker) are atomic, so no token is lost
    # between taking a batch and the next append.
    tokens: deque[AckToken] = deque()
    decoder = MessageDecoder(select_profiles(DEFAULT_PROFILES))
    rejected = 0

    def on_message(message: InboundMessage, token: AckToken | None) -> None:
        nonlocal rejected
        reporter.hit()
        if decode and not isinstance(
            decoder.decode(message.topic, message.payload, message.received_us), Decoded
        ):
            rejected += 1
        if token is not None:
            tokens.append(token)

    def on_connection_change(up: bool) -> None:
        if up:
            reporter.emit("ready")

    sub = MqttSubscriber(
        endpoint=MqttEndpoint(HOST, port),
        client_id="bench-fieldhub",
        filters=[TELEMETRY_FILTER],
        on_message=on_message,
        on_connection_change=on_connection_change,
        persistent=False,
    )
    stop_acking = threading.Event()
    acked = 0

    def acker() -> None:
        nonlocal acked
        while not stop_acking.wait(ACK_EVERY_S):
            batch = [tokens.popleft() for _ in range(len(tokens))]
            if batch:
                sub.ack(batch)
                acked += len(batch)

    sub.start()
    ack_thread = threading.Thread(target=acker, name="acker", daemon=True)
    ack_thread.start()
    _wait_for_sigterm()
    stop_acking.set()
    ack_thread.join()
    reporter.extra = {"acked": acked, "decode_rejected": rejected if decode else None}
    reporter.done()
    sub.stop()


# --- asyncio clients ----------------------------------------------------------------------------


async def _until_sigterm() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


async def run_gmqtt(port: int, reporter: Reporter, *, ack_after_coroutine: bool) -> None:
    """gmqtt, MQTT 5. Sync callback: gmqtt 0.8.0 sends the PUBACK before calling it
    (optimistic_acknowledgement=True; with False a sync callback's PUBACK is never sent, see
    gmqtt/mqtt/utils.py run_coroutine_or_function). Async callback with
    optimistic_acknowledgement=False: the PUBACK follows the coroutine's return value, as
    ack-after-commit would need."""
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv50

    client = gmqtt.Client("bench-gmqtt", optimistic_acknowledgement=not ack_after_coroutine)

    def on_subscribe(*_: Any) -> None:
        reporter.emit("ready")

    def on_message(*_: Any) -> int:
        reporter.hit()
        return 0  # the PUBACK's reason code: success

    async def on_message_async(*_: Any) -> int:
        reporter.hit()
        return 0

    client.on_subscribe = on_subscribe
    client.on_message = on_message_async if ack_after_coroutine else on_message
    await client.connect(HOST, port, version=MQTTv50)
    client.subscribe(TELEMETRY_FILTER, qos=1)
    await _until_sigterm()
    reporter.done()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(client.disconnect(), DISCONNECT_TIMEOUT_S)


async def run_aiomqtt(port: int, reporter: Reporter) -> None:
    """aiomqtt, MQTT 5, its message iterator. paho underneath acknowledges each message on
    receipt, before the iterator hands it over: aiomqtt has no manual acks."""
    import aiomqtt

    async with aiomqtt.Client(
        HOST, port, identifier="bench-aiomqtt", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(TELEMETRY_FILTER, qos=1)
        reporter.emit("ready")

        async def count() -> None:
            async for _message in client.messages:
                reporter.hit()

        counter = asyncio.create_task(count())
        await _until_sigterm()
        reporter.done()
        counter.cancel()


def _run_async(main: Callable[[], Any]) -> None:
    uvloop.run(main())


def run(client: str, port: int) -> None:
    reporter = Reporter()
    reporter.start_progress()
    if client == "paho-plain":
        run_paho_plain(port, reporter)
    elif client in ("fieldhub", "fieldhub+decode"):
        run_fieldhub(port, reporter, decode=client == "fieldhub+decode")
    elif client in ("gmqtt", "gmqtt-async"):
        _run_async(lambda: run_gmqtt(port, reporter, ack_after_coroutine=client == "gmqtt-async"))
    elif client == "aiomqtt":
        _run_async(lambda: run_aiomqtt(port, reporter))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.mqtt_client_sub",
        description="One subscriber candidate of bench/mqtt_clients.py (JSON lines on stdout; "
        "SIGTERM ends it with a 'done' line).",
    )
    p.add_argument("--client", choices=CLIENTS, required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    run(args.client, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
