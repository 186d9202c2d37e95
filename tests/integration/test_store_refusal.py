"""A message the database refuses on its own becomes a dead letter; ingest does not stall."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from fieldhub.broker import MosquittoProcess
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, count_metric, publish_all

POISON = 666.0


def test_message_refused_by_the_database_is_dead_lettered_and_ingest_goes_on(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    """A real SQLite trigger refuses one value: that message is a dead letter, the rest land."""
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=mosquitto.url).start()
    conn = sqlite3.connect(fh.db_path)
    conn.execute(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON readings "
        f"WHEN NEW.value = {POISON} BEGIN SELECT RAISE(ABORT, 'poison value'); END"
    )
    conn.commit()
    conn.close()
    prefix = f"refuse{uuid.uuid4().hex[:6]}"
    messages = [
        (f"devices/{prefix}-{n:02d}/telemetry", b'{"temperature": %d}' % (POISON if n == 5 else n))
        for n in range(20)
    ]
    publisher = connected_publisher(mosquitto.url)
    publish_all(publisher, messages)
    wait_until(lambda: count_metric(fh.db_path, prefix, "temperature") >= 19, what="19 good rows")

    def refused() -> list[dict[str, object]]:
        letters = fh.get("/api/v1/dead-letters", reason="store_rejected").json()["data"]
        return [d for d in letters if str(d["topic"]).startswith(f"devices/{prefix}")]

    letters = wait_until(refused, what="the refused message in dead letters")
    assert [d["topic"] for d in letters] == [f"devices/{prefix}-05/telemetry"]
    assert "poison value" in str(letters[0]["detail"])
    assert count_metric(fh.db_path, prefix, "temperature") == 19
    # Still ingesting.
    publish_all(publisher, [(f"devices/{prefix}-99/telemetry", b'{"temperature": 1}')])
    wait_until(lambda: count_metric(fh.db_path, prefix, "temperature") == 20, what="a later row")
    publisher.stop()
    assert fh.stop() == 0
