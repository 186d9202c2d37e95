"""E-mail through a real aiosmtpd server: plain, STARTTLS with a login, refusals classified."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import random
import secrets
import ssl
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fieldhub.clock import US_PER_S
from fieldhub.net import free_port
from fieldhub.notify.email import EmailSender, SmtpSettings, message_id, recipients
from fieldhub.notify.message import Notification
from fieldhub.notify.retry import RetryPolicy, deliver
from notify.conftest import DeliveryLog, InstantTime, Mailbox
from support.secrets import remember

USER = "fieldhub-mailer"


def alarm(target: str = "ops@example.com, Boss <boss@example.com>") -> Notification:
    return Notification(
        kind="email",
        target=target,
        subject="[major] Cold room above 8 °C: 3C:E9:0E:72:12:4C",
        payload={
            "rule": "cold-room-high",
            "device": "3C:E9:0E:72:12:4C",
            "metric": "temperature",
            "value": 8.4,
            "threshold": 8.0,
            "severity": "major",
        },
        key="alarm-17-fire",
        created_us=1_700_000_000 * US_PER_S,
    )


def parsed(envelope: Envelope) -> EmailMessage:
    assert isinstance(envelope.content, bytes)
    message = message_from_bytes(envelope.content, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def send(
    sender: EmailSender, notification: Notification, log: DeliveryLog, time: InstantTime
) -> None:
    await deliver(
        notification,
        sender,
        policy=RetryPolicy(max_attempts=3),
        clock=time.clock,
        sleep=time.sleep,
        rng=random.Random(3),
        on_delivery=log,
    )


async def test_plain_smtp_with_the_alarms_details(
    smtp_server: tuple[Mailbox, int], delivery_log: DeliveryLog, instant_time: InstantTime
) -> None:
    mailbox, port = smtp_server
    sender = EmailSender(SmtpSettings("127.0.0.1", port, from_addr="fieldhub@example.com"))
    await send(sender, alarm(), delivery_log, instant_time)

    [delivery] = delivery_log.records
    assert (delivery.outcome, delivery.status, delivery.attempt) == ("delivered", 250, 1)
    [envelope] = mailbox.envelopes
    assert envelope.mail_from == "fieldhub@example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "boss@example.com"]
    message = parsed(envelope)
    assert message["Subject"] == "[major] Cold room above 8 °C: 3C:E9:0E:72:12:4C"
    assert message["To"] == "ops@example.com, boss@example.com"
    assert message["Message-ID"] == "<alarm-17-fire@fieldhub>"
    body = message.get_content()
    for line in (
        "rule: cold-room-high",
        "device: 3C:E9:0E:72:12:4C",
        "metric: temperature",
        "value: 8.4",
        "threshold: 8.0",
        "severity: major",
    ):
        assert line in body.splitlines()
    assert "alarm-17-fire" in body


async def test_a_refused_recipient_fails_and_a_busy_one_is_retried(
    smtp_server: tuple[Mailbox, int], delivery_log: DeliveryLog, instant_time: InstantTime
) -> None:
    mailbox, port = smtp_server
    mailbox.refuse = {"gone@example.com": "550 no such user", "busy@example.com": "451 later"}
    sender = EmailSender(SmtpSettings("127.0.0.1", port, from_addr="fieldhub@example.com"))

    await send(sender, alarm("gone@example.com"), delivery_log, instant_time)
    [gone] = delivery_log.records
    assert (gone.outcome, gone.status) == ("failed", 550)
    assert "gone@example.com 550" in (gone.error or "")

    delivery_log.records.clear()
    await send(sender, alarm("busy@example.com"), delivery_log, instant_time)
    assert [(d.outcome, d.status) for d in delivery_log.records] == [
        ("retrying", 451),
        ("retrying", 451),
        ("failed", 451),
    ]
    assert mailbox.envelopes == []


async def test_a_server_that_is_down_is_retried(
    delivery_log: DeliveryLog, instant_time: InstantTime
) -> None:
    sender = EmailSender(
        SmtpSettings("127.0.0.1", free_port(), from_addr="fieldhub@example.com", timeout_s=2)
    )
    await send(sender, alarm(), delivery_log, instant_time)
    assert [d.outcome for d in delivery_log.records] == ["retrying", "retrying", "failed"]
    assert "ConnectionRefusedError" in (delivery_log.records[0].error or "")


def test_recipients_and_message_ids() -> None:
    assert recipients("a@x, B <b@y>,  ") == ["a@x", "b@y"]
    assert message_id("digest-rule/1 x") == "<digest-rule-1-x@fieldhub>"


# ---------------------------------------------------------------------------
# STARTTLS and a login
# ---------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key: (cert, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fieldhub test SMTP")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp.crt", directory / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class TlsSmtp:
    def __init__(self, mailbox: Mailbox, port: int, cert: Path, password: str) -> None:
        self.mailbox, self.port, self.cert, self.password = mailbox, port, cert, password


@pytest.fixture
def smtp_password() -> str:
    password = "smtp-" + secrets.token_urlsafe(18)
    remember(password)
    return password


@pytest.fixture
def tls_smtp(tmp_path: Path, smtp_password: str) -> Iterator[TlsSmtp]:
    """An SMTP server that requires STARTTLS (a self-signed certificate) and a login."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == USER.encode()
            and data.password == smtp_password.encode()
        )
        return AuthResult(success=ok, handled=False)

    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticate,
    )
    controller.start()
    yield TlsSmtp(mailbox, port, cert, smtp_password)
    controller.stop()


def tls_settings(server: TlsSmtp, **kw: object) -> SmtpSettings:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "from_addr": "fieldhub@example.com",
        "starttls": True,
        "ca_file": str(server.cert),
        "username": USER,
        "password": server.password,
    }
    return SmtpSettings(**{**base, **kw})  # type: ignore[arg-type]


async def test_starttls_and_login(
    tls_smtp: TlsSmtp,
    delivery_log: DeliveryLog,
    instant_time: InstantTime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sender = EmailSender(tls_settings(tls_smtp))
    assert tls_smtp.password not in repr(sender.settings)
    await send(sender, alarm(), delivery_log, instant_time)

    assert [d.outcome for d in delivery_log.records] == ["delivered"]
    [envelope] = tls_smtp.mailbox.envelopes
    assert parsed(envelope)["Subject"].startswith("[major] Cold room above 8 °C")
    assert tls_smtp.password not in caplog.text
    assert tls_smtp.password not in repr(delivery_log.records)


async def test_a_wrong_password_fails_at_once_without_showing_it(
    tls_smtp: TlsSmtp,
    delivery_log: DeliveryLog,
    instant_time: InstantTime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + secrets.token_urlsafe(18)
    remember(wrong)
    sender = EmailSender(tls_settings(tls_smtp, password=wrong))
    await send(sender, alarm(), delivery_log, instant_time)

    [delivery] = delivery_log.records
    assert (delivery.outcome, delivery.status) == ("failed", 535)
    assert wrong not in caplog.text
    assert wrong not in repr(delivery_log.records)
    assert tls_smtp.mailbox.envelopes == []


async def test_an_untrusted_certificate_fails_at_once(
    tls_smtp: TlsSmtp, delivery_log: DeliveryLog, instant_time: InstantTime
) -> None:
    # Without the test's CA file only the system's CAs are trusted: the self-signed cert is not.
    sender = EmailSender(tls_settings(tls_smtp, ca_file=None))
    await send(sender, alarm(), delivery_log, instant_time)

    [delivery] = delivery_log.records
    assert delivery.outcome == "failed"
    assert "SSLCertVerificationError" in (delivery.error or "")


async def test_a_login_without_starttls_is_refused(
    tls_smtp: TlsSmtp, delivery_log: DeliveryLog, instant_time: InstantTime
) -> None:
    # The server demands STARTTLS first: a plain session is refused, not retried forever.
    sender = EmailSender(tls_settings(tls_smtp, starttls=False))
    await send(sender, alarm(), delivery_log, instant_time)
    assert delivery_log.records[-1].outcome == "failed"
    assert len(delivery_log.records) == 1
    assert tls_smtp.mailbox.envelopes == []
