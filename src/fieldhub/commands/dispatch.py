"""Dispatch: handing pending commands to the broker and hearing that it took them.

It owns the commands' MQTT connection (TCP_NODELAY and a bounded in-flight window come with
`MqttPublisher`). A device's pending commands go out, oldest first, when it is heard from (or the
connection comes back); the broker's PUBACK moves a command to `sent`. A publish the broker never
acknowledged is handed out again when the device is next heard from: the device drops a repeated
id, so a second copy does no harm.

A format with a retained fallback topic (the FastAPI stack's `devices/{MAC}/commands/last`, which
its node reads on every reconnect) also gets a state command admitted while its device is offline
or stale left there, retained, stamped with the time; it is cleared (an empty retained payload)
once the command was sent on the command topic or ended, so an old command cannot run again on a
later reconnect (the node itself ignores one over 5 minutes old). Only the newest such command of
a device is held there; an older one ending leaves it alone.

The MQTT callbacks run on the client's network thread and hop onto the event loop; everything
else runs on the loop.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Future

from fieldhub.clock import US_PER_S, Clock
from fieldhub.commands.active import ActiveCommand, ActiveCommands, CommandKey, key_of
from fieldhub.commands.formats import Outgoing
from fieldhub.commands.tasks import Tasks
from fieldhub.commands.tracking import CommandDeadlines, CommandTracker
from fieldhub.errors import Unavailable
from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.mqtt.publisher import MqttPublisher
from fieldhub.protocol.command_states import CommandState
from fieldhub.store.base import Store
from fieldhub.store.types import CommandOutcome, CommandRow

# A publish the broker has not acknowledged after this long (the connection dropped under it)
# is handed out again when the device is next heard from; the device drops a repeated id.
PUBLISH_ACK_TIMEOUT_S = 10.0


class Dispatcher:
    """Publishes pending commands and follows the broker's acknowledgements."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        active: ActiveCommands,
        deadlines: CommandDeadlines,
        tracker: CommandTracker,
        tasks: Tasks,
        endpoint: MqttEndpoint,
        client_id: str,
        protocol: int,
    ) -> None:
        self._store = store
        self._clock = clock
        self._active = active
        self._deadlines = deadlines
        self._tracker = tracker
        self._publisher = MqttPublisher(
            endpoint=endpoint,
            client_id=client_id,
            protocol=protocol,
            on_subscribed=self._on_broker,
        )
        self._tasks = tasks
        self._loop: asyncio.AbstractEventLoop | None = None
        # Device -> (the command left on its retained fallback topic, that topic).
        self._fallbacks: dict[str, tuple[CommandKey, str]] = {}

    @property
    def connected(self) -> bool:
        """True while the commands' MQTT connection is up."""
        return self._publisher.connected

    def start(self) -> None:
        """Connect (in the background) on behalf of the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._publisher.start()

    async def stop(self) -> None:
        """Disconnect; commands not yet acknowledged stay pending in the store."""
        await asyncio.to_thread(self._publisher.stop)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """A plain publish on the commands' connection (not a tracked command); Unavailable
        while it is down."""
        if not self._publisher.connected:
            raise Unavailable("the commands' MQTT connection is down", code="mqtt_unavailable")
        self._publisher.publish(topic, payload, qos=qos, retain=retain)

    def dispatch(self, device_id: str) -> None:
        """Hand the device's pending commands to the broker, oldest first."""
        if not self._publisher.connected:
            return  # _on_broker sends them once connected
        now = self._clock.now_us()
        for active in self._active.of_device(device_id):
            row = active.row
            if row.state is not CommandState.PENDING or active.publishing:
                continue
            key = (device_id, row.command_id)
            if row.expires_us is not None and row.expires_us <= now:
                # Its expiry deadline may have come while a publish was in flight and skipped it.
                self._deadlines.schedule(key, "expire", now)
                continue
            topic_id = active.fmt.topic_id_of(row.topic)
            payload = active.fmt.encode(
                Outgoing(row.command_id, row.name, row.params, topic_id, now)
            )
            active.publishing = True
            active.published_us = now
            future = self._publisher.publish(row.topic, payload, qos=1)
            self._deadlines.schedule(key, "publish", now + int(PUBLISH_ACK_TIMEOUT_S * US_PER_S))
            future.add_done_callback(functools.partial(self._puback_done, key, now))

    def leave_fallback(self, active: ActiveCommand) -> bool:
        """Leave a command for an offline device on its format's retained fallback topic, if
        the format has one for the command; True when it was handed to the broker."""
        row = active.row
        topic_id = active.fmt.topic_id_of(row.topic)
        topic = active.fmt.fallback_topic(topic_id, row.name)
        if topic is None or not self._publisher.connected:
            return False
        now = self._clock.now_us()
        payload = active.fmt.encode(Outgoing(row.command_id, row.name, row.params, topic_id, now))
        self._publisher.publish(topic, payload, qos=1, retain=True)
        self._fallbacks[row.device_id] = (key_of(row), topic)
        return True

    def held_fallback(self, active: ActiveCommand) -> None:
        """A command loaded at start may still be on its fallback topic: clear it when it is
        sent or ends (the newest loaded one of a device wins)."""
        row = active.row
        topic = active.fmt.fallback_topic(active.fmt.topic_id_of(row.topic), row.name)
        if topic is not None and row.state is CommandState.PENDING:
            self._fallbacks[row.device_id] = (key_of(row), topic)

    def settled(self, row: CommandRow) -> None:
        """A transition was stored: once the command left `pending`, its fallback goes."""
        held = self._fallbacks.get(row.device_id)
        if row.state is CommandState.PENDING or held is None or held[0] != key_of(row):
            return
        del self._fallbacks[row.device_id]
        # An empty retained payload deletes the retained message (the node, if subscribed, gets
        # it too and drops it: mqttCallback cannot parse it).
        self._publisher.publish(held[1], b"", qos=1, retain=True)

    def dispatch_soon(self, device_id: str) -> None:
        """Look up whether the device is online, and dispatch to it if so (in a task)."""
        self._tasks.spawn(
            self._dispatch_if_online(device_id), name=f"commands.publish[{device_id}]"
        )

    def publish_timed_out(self, key: CommandKey) -> None:
        """The `publish` deadline came: no PUBACK, so the command may go out again."""
        active = self._active.get(key)
        if active is not None and active.publishing and active.row.state is CommandState.PENDING:
            active.publishing = False
            self.dispatch_soon(key[0])

    async def _dispatch_if_online(self, device_id: str) -> None:
        device = await self._store.get_device(device_id, now_us=self._clock.now_us())
        if device is not None and device.presence == "online":
            self.dispatch(device_id)

    def _on_broker(self, up: bool) -> None:
        # Network thread: the connection is (re)established and subscribed, or lost.
        if up and self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch_all)

    def _dispatch_all(self) -> None:
        for device_id in self._active.devices():
            self.dispatch_soon(device_id)

    def _puback_done(self, key: CommandKey, published_us: int, future: Future[None]) -> None:
        # Network thread (or at once, if the publish failed): hop onto the loop.
        delivered = future.exception() is None
        if self._loop is not None:
            self._loop.call_soon_threadsafe(
                self._on_puback, key, published_us, delivered, self._clock.now_us()
            )

    def _on_puback(
        self, key: CommandKey, published_us: int, delivered: bool, acked_us: int
    ) -> None:
        active = self._active.get(key)
        if active is None or active.published_us != published_us:
            return
        if not delivered:
            active.publishing = False  # sent again when the device is next heard from
            self._deadlines.cancel(key, "publish")
            expires_us = active.row.expires_us
            if expires_us is not None and expires_us <= acked_us:
                self._deadlines.schedule(key, "expire", acked_us)
            return
        self._tracker.transition_soon(
            key,
            CommandState.SENT,
            CommandOutcome("the broker accepted it for the device"),
            at_us=acked_us,
        )
