"""Mosquitto `$7$` hashes: ours load in Mosquitto, mosquitto_passwd's check with ours."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from broker.clients import connect
from fieldhub.broker import BrokerAccess, DeviceCredential, MosquittoProcess
from fieldhub.broker.passwd import (
    PBKDF2_ITERATIONS,
    check_password,
    hash_password,
    is_mosquitto_hash,
)
from fieldhub.net import free_port


def test_hash_round_trip_and_format() -> None:
    encoded = hash_password("s3cret")
    assert encoded.startswith(f"$7${PBKDF2_ITERATIONS}$")
    assert is_mosquitto_hash(encoded)
    assert check_password("s3cret", encoded)
    assert not check_password("s3cret!", encoded)
    assert not check_password("", encoded)
    assert hash_password("s3cret") != encoded  # a fresh salt each time
    assert hash_password("x", salt=b"0" * 12) == hash_password("x", salt=b"0" * 12)


@pytest.mark.parametrize("password", ["", "a\x00b"])
def test_refuses_passwords_mosquitto_cannot_check(password: str) -> None:
    with pytest.raises(ValueError, match="password"):
        hash_password(password)


@pytest.mark.parametrize(
    "encoded", ["plain", "$6$abc$def", "$7$0$AAAAAAAAAAAAAAAA$" + "A" * 86 + "==", "x:y"]
)
def test_malformed_hashes_are_refused(encoded: str) -> None:
    assert not is_mosquitto_hash(encoded)
    with pytest.raises(ValueError, match="not a Mosquitto"):
        check_password("x", encoded)


def test_mosquitto_passwd_output_checks_with_ours(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-b", "-c", str(path), "dev-a", "their secret"], check=True)
    username, encoded = path.read_text().strip().split(":", 1)
    assert username == "dev-a"
    assert encoded.startswith(f"$7${PBKDF2_ITERATIONS}$")  # the same default as ours
    assert is_mosquitto_hash(encoded)
    assert check_password("their secret", encoded)
    assert not check_password("their secreT", encoded)


def test_mosquitto_accepts_our_hash_for_the_right_password_only(reachable_dir: Path) -> None:
    access = BrokerAccess(devices=(DeviceCredential("dev-a", hash_password("right one")),))
    broker = MosquittoProcess(data_dir=reachable_dir, port=free_port(), access=access)
    broker.start()
    try:
        connect(broker.host, broker.port, username="dev-a", password="right one").stop()
        connect(broker.host, broker.port, username="dev-a", password="wrong one", expect=5)
        assert "removing entry" not in broker.log_path.read_text()
    finally:
        broker.stop()
