"""`fieldhub ingest --workers N` as a subprocess, and reading numbers from its database."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from pathlib import Path

import asyncpg
import psutil

from support.fieldhub_process import FIELDHUB


def query(url: str, sql: str) -> int:
    """One number from the database; -1 while the workers have not created the schema yet."""

    async def run() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval(sql))
        except asyncpg.UndefinedTableError:
            return -1
        finally:
            await conn.close()

    return asyncio.run(run())


class Workers:
    """`fieldhub ingest --workers N` as a subprocess."""

    def __init__(
        self, count: int, db_url: str, mqtt_url: str, log: Path, client_id: str | None = None
    ) -> None:
        # A client id of its own per test: it names the share group, so workers of another
        # test on the same broker never take this test's messages.
        self.client_id = client_id or f"fh-workers-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "FIELDHUB_MQTT_CLIENT_ID": self.client_id,
            "FIELDHUB_LOG_LEVEL": "info",
        }
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [str(FIELDHUB), "ingest", "--workers", str(count), "--db", db_url,
             "--mqtt-url", mqtt_url],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        self.count = count

    def children(self) -> list[psutil.Process]:
        return [p for p in psutil.Process(self.proc.pid).children() if p.is_running()]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.close()
        return code
