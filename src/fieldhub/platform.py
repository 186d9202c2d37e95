"""The composition root: builds every long-lived part of one fieldhub process and starts and
stops them in order. Nothing imports this module but the entry points (`app.py`, `server.py`,
the CLI): parts receive the other parts they use, never the platform."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from prometheus_client import CollectorRegistry

from fieldhub import clock
from fieldhub.backup.in_use import hold_running
from fieldhub.backup.schedule import BackupJob
from fieldhub.broker.access import BrokerAccess, InternalClient, fastapi_firmware_login
from fieldhub.broker.access import Role as BrokerRole
from fieldhub.broker.config import LegacyListener, TlsListener
from fieldhub.broker.legacy import select_legacy_policies
from fieldhub.broker.passwd import hash_password
from fieldhub.broker.supervisor import BrokerSupervisor
from fieldhub.commands.service import CommandLimits, CommandService
from fieldhub.config import Settings
from fieldhub.events.bus import EventBus
from fieldhub.ingest.follower import Follower
from fieldhub.ingest.metrics import IngestMetrics
from fieldhub.ingest.pipeline import Ingest
from fieldhub.live.hub import LiveHub
from fieldhub.ml.loop import WindowLoop
from fieldhub.ml.registry import Registry
from fieldhub.mqtt.endpoint import MqttEndpoint, parse_mqtt_url
from fieldhub.mqtt.subscriber import MqttSubscriber
from fieldhub.notify.email import EmailSender, SmtpSettings
from fieldhub.notify.message import Delivery, Kind
from fieldhub.notify.queue import Dispatcher
from fieldhub.notify.webhook import WebhookSender
from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.profiles import select_profiles
from fieldhub.rules.engine import RuleEngine
from fieldhub.security import mqtt_clients
from fieldhub.security.device_access import DeviceAccess, NodeEndpoint
from fieldhub.security.mqtt_clients import ClientLogin, ClientRole
from fieldhub.security.passwords import PLACEHOLDERS
from fieldhub.security.service import AuthService
from fieldhub.status import StatusReporter
from fieldhub.store.open import open_store
from fieldhub.store.retention import RetentionJob

log = logging.getLogger("fieldhub")

# Listening on these means every interface; fieldhub's own clients then use loopback.
WILDCARD_HOSTS = ("0.0.0.0", "::")
# The CA's file name on a node's flash (firmware/README.md, `fieldhub certs init`).
CA_FILE_ON_NODE = "ca.der"


class Platform:
    """Every long-lived part of one fieldhub process, started and stopped in order."""

    def __init__(
        self, settings: Settings, *, mqtt_port: int | None = None, mqtt_tls_port: int | None = None
    ) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        profiles = select_profiles(settings.profiles)
        self.decoder = MessageDecoder(profiles)
        self.store = open_store(
            settings.db_url, stale_after_s={p.name: p.stale_after_s for p in profiles}
        )
        self.store.input_limits = settings.input_limits
        self.metrics = IngestMetrics(self.registry)
        # API-only beside ingest workers: follow the broker, leave storing readings to them.
        self.follower = None if settings.ingest else Follower(self.store)
        self.ingest = Ingest(
            store=self.store, decoder=self.decoder, metrics=self.metrics, writer=self.follower
        )
        self.bus = EventBus(self.registry)
        self.ingest.listeners.append(self.bus.on_commit)
        external = settings.external_broker
        self.broker: BrokerSupervisor | None = None
        if external is None and not settings.ingest:
            raise ValueError(
                "without ingest (--no-ingest) fieldhub serves what ingest workers store: give it "
                "their broker with --mqtt-url and their database with --db"
            )
        # fieldhub's own logins on its embedded broker when credentials are required; with an
        # external broker they come from its URL (docs/security.md).
        self.mqtt_logins: dict[ClientRole, ClientLogin] = {}
        tls_port = mqtt_tls_port or settings.mqtt_tls_port
        if external is None:
            port = mqtt_port or settings.mqtt_port
            if port is None:
                raise ValueError("the embedded broker needs a port (the CLI picks one)")
            if settings.auth:
                self.mqtt_logins = mqtt_clients.load_or_create(settings.data_dir)
            self.broker = BrokerSupervisor(
                data_dir=settings.data_dir,
                port=port,
                host=settings.mqtt_host,
                executable=settings.mosquitto,
                # Placeholder until start(): the device credentials are in the store.
                access=BrokerAccess() if settings.auth else None,
                tls=TlsListener(tls_port, settings.tls_cert, settings.tls_key)
                if settings.auth and tls_port is not None and settings.tls_cert and settings.tls_key
                else None,
                legacy=LegacyListener(
                    settings.mqtt_legacy_host or settings.mqtt_host, settings.mqtt_legacy_port
                )
                if settings.mqtt_legacy_port is not None
                else None,
            )
            # fieldhub's own clients reach a broker listening on every interface over loopback.
            local = replace(
                parse_mqtt_url(self.broker.url),
                host="127.0.0.1" if settings.mqtt_host in WILDCARD_HOSTS else settings.mqtt_host,
            )
            self.mqtt_endpoint: MqttEndpoint = local
        else:
            self.mqtt_endpoint = external
        self.device_access = DeviceAccess(
            self.store,
            node_endpoint=NodeEndpoint(
                host=settings.mqtt_host if external is None else self.mqtt_endpoint.host,
                port=self.mqtt_endpoint.port,
                tls_port=tls_port if external is None else None,
                ca_file=CA_FILE_ON_NODE if settings.tls_ca or settings.tls_cert else None,
            ),
            on_change=self._apply_broker_access if self.mqtt_logins else None,
        )
        self.subscriber = MqttSubscriber(
            endpoint=self._as("ingest"),
            client_id=self.mqtt_logins["ingest"].username
            if self.mqtt_logins
            else settings.mqtt_client_id
            if settings.ingest
            else f"{settings.mqtt_client_id}-api",
            filters=self.decoder.subscriptions,
            on_message=self.ingest.on_message,
            protocol=settings.protocol_version,
            on_connection_change=self._connection_changed,
            persistent=settings.ingest,
        )
        self.ingest.acker = self.subscriber.ack
        self.status = StatusReporter(
            store=self.store,
            registry=self.registry,
            ingest=self.ingest,
            bus=self.bus,
            broker=self.broker,
            mqtt_url=self.mqtt_endpoint.url,
            mqtt_connected=lambda: self.subscriber.connected,
            mqtt_problem=lambda: self.subscriber.problem,
            store_unwritable_503_s=settings.store_unwritable_503_s,
            retention=settings.retention,
        )
        self.live = LiveHub(self.bus, self.registry, stats=self._stats_frame)
        self.status.live = self.live
        self.commands = CommandService(
            store=self.store,
            bus=self.bus,
            endpoint=self._as("commands"),
            client_id=self.mqtt_logins["commands"].username
            if self.mqtt_logins
            else f"{settings.mqtt_client_id}-commands",
            protocol=settings.protocol_version,
            registry=self.registry,
            limits=CommandLimits(
                rate_per_s=settings.command_rate_per_s,
                burst=settings.command_burst,
                queue_max=settings.command_queue_max,
                default_expiry_s=settings.command_expiry_s,
            ),
            default_formats={p.name: p.command_format for p in profiles},
        )
        self.ingest.listeners.append(self.commands.on_commit)
        # Rules and alarms (docs/rules.md): notifications go out through the dispatcher
        # (bounded queues, retries, digests), each attempt into the engine's notification log.
        self._senders = self._notification_senders(settings)
        self.notify = Dispatcher(
            self._senders, registry=self.registry, on_delivery=self._notification_delivered
        )
        self.rules = RuleEngine(
            self.store,
            self.bus,
            self.commands,
            self.notify,
            registry=self.registry,
            tick_s=settings.rules_tick_s,
            publish=self.commands.publish,
        )
        # The window loop (docs/ml.md): decisions from the trigger and from the backbone's
        # requests, through the active model and the guards, to tracked window commands.
        self.ml = WindowLoop(
            self.store,
            self.bus,
            self.commands,
            Registry(settings.model_registry),
            metrics=self.registry,
            mode=settings.ml_mode,
        )
        self.ingest.request_listeners.append(self.ml.on_requests)
        # Scheduled backups (docs/backups.md), when a directory is set.
        self.backups = BackupJob(settings, registry=self.registry) if settings.backup_dir else None
        self.retention = RetentionJob(
            store=self.store,
            policy=settings.retention,
            registry=self.registry,
            interval_s=settings.retention_interval_s,
            disk_budget_bytes=int(settings.disk_budget_mb * 2**20)
            if settings.disk_budget_mb
            else None,
        )
        # Who may do what over HTTP (api/auth.py, web/); off in demo mode (settings.auth).
        self.auth = AuthService(
            self.store, enabled=settings.auth, allowed_origins=settings.http_origins
        )
        self._sessions: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._size_watch: asyncio.Task[None] | None = None
        self.ingest.listeners.append(self.retention.on_commit)
        self._writer: asyncio.Task[None] | None = None
        self._live: asyncio.Task[None] | None = None
        self.on_stop: list[Callable[[], None]] = []

    @staticmethod
    def _notification_senders(settings: Settings) -> dict[Kind, WebhookSender | EmailSender]:
        """Webhooks always; e-mail when an SMTP server is configured. Outside demo mode the
        SMTP password may not be a well-known placeholder (like every other credential)."""
        senders: dict[Kind, WebhookSender | EmailSender] = {"webhook": WebhookSender()}
        if settings.smtp_host is None:
            return senders
        password = (
            settings.smtp_password.get_secret_value()
            if settings.smtp_password is not None
            else None
        )
        if settings.auth and password is not None and password.strip().lower() in PLACEHOLDERS:
            raise ValueError(
                "smtp_password is a well-known placeholder; give the SMTP account's real "
                "password (or run with --demo on 127.0.0.1)"
            )
        senders["email"] = EmailSender(
            SmtpSettings(
                host=settings.smtp_host,
                port=settings.smtp_port,
                from_addr=settings.smtp_from,
                starttls=settings.smtp_starttls,
                username=settings.smtp_username,
                password=password,
            )
        )
        return senders

    def _notification_delivered(self, delivery: Delivery) -> None:
        self.rules.record_delivery(delivery)

    def _as(self, role: ClientRole) -> MqttEndpoint:
        """The broker endpoint with the login of one of fieldhub's own clients, if it has one."""
        login = self.mqtt_logins.get(role)
        if login is None:
            return self.mqtt_endpoint
        return replace(self.mqtt_endpoint, username=login.username, password=login.password)

    async def broker_access(self) -> BrokerAccess:
        """Who the embedded broker lets in now: fieldhub's clients, every device credential in
        force, and the legacy stacks' policies when the legacy listener is on."""
        settings = self.settings
        legacy = (
            select_legacy_policies(settings.mqtt_legacy_policies)
            if settings.mqtt_legacy_port is not None
            else ()
        )
        return BrokerAccess(
            internal=tuple(
                InternalClient(login.username, hash_password(login.password), BrokerRole(role))
                for role, login in self.mqtt_logins.items()
            ),
            devices=await self.device_access.active(),
            legacy=legacy,
            legacy_logins=(fastapi_firmware_login(),)
            if any(policy.login is not None for policy in legacy)
            else (),
        )

    async def _apply_broker_access(self) -> None:
        if self.broker is not None:
            await self.broker.reload(await self.broker_access())

    async def _stats_frame(self) -> dict[str, object]:
        return (await self.status.snapshot()).model_dump()

    def _connection_changed(self, connected: bool) -> None:
        self.metrics.mqtt_connected.set(1 if connected else 0)
        if connected:
            self.metrics.mqtt_connects.inc()

    async def start(self) -> None:
        """Store, broker (if embedded), ingest writer, then the MQTT subscription."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Marks the data dir in use (a restore refuses it) until this process ends.
        self._in_use = hold_running(self.settings.data_dir)
        await self.store.open()
        if self.broker is not None:
            # The broker's password and ACL files come from the store: open it first.
            if self.mqtt_logins:
                await self.broker.reload(await self.broker_access())  # not running: kept for start
            await self.broker.start()
        if self.follower is not None:
            await self.follower.load(clock.now_us())
        await self.ingest.load_state()
        await self.auth.start()
        self._sessions = asyncio.create_task(self.auth.run_housekeeping(), name="auth.sessions")
        self._writer = asyncio.create_task(self.ingest.run(), name="ingest.writer")
        self._live = asyncio.create_task(self.live.run(), name="live.hub")
        await self.commands.start()
        await self.rules.start()
        await self.ml.start()
        self._retention = asyncio.create_task(self.retention.run(), name="store.retention")
        self._size_watch = asyncio.create_task(self.retention.watch(), name="store.size_watch")
        # The subscriber connects in the background and retries forever: the API serves stored
        # data even while the broker is unreachable.
        self.subscriber.start()
        if self.backups is not None:
            self.backups.start()

    async def stop(self) -> None:
        """Flush what was received, disconnect, stop the writer, close the store and broker."""
        for callback in self.on_stop:
            callback()
        if self.backups is not None:
            await self.backups.stop()
        await self.ml.stop()
        await self.rules.stop()
        await self.notify.close()
        # What closing the dispatcher dropped is logged too (the store is still open).
        await self.rules.notification_log.flush()
        for sender in self._senders.values():
            await sender.aclose()
        await self.commands.stop()
        await self.ingest.drain()
        await asyncio.to_thread(self.subscriber.stop)
        await self.ingest.drain()
        for task in (self._writer, self._live, self._retention, self._size_watch, self._sessions):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        await self.store.close()
        if self.broker is not None:
            await self.broker.stop()
