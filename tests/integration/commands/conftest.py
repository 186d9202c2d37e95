"""Shared by the command tests: one broker and one `fieldhub up` per module, and a stack that
stops whatever a test started."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from conftest import start_mosquitto
from fieldhub.broker import MosquittoProcess
from support.fieldhub_process import FieldhubProcess


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    process = start_mosquitto(tmp_path_factory.mktemp("commands-broker"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def fh(
    broker: MosquittoProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FieldhubProcess]:
    process = FieldhubProcess(
        data_dir=tmp_path_factory.mktemp("commands-fh"),
        mqtt_url=broker.url,
        env={"FIELDHUB_MQTT_CLIENT_ID": f"fh-commands-{uuid.uuid4().hex[:8]}"},
    ).start()
    yield process
    assert process.stop() == 0


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    """Stops what a test started (devices, recorders), also when it fails."""
    with ExitStack() as stack:
        yield stack
