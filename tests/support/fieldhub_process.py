"""Run `fieldhub up` as a real subprocess, as a user would, and talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from fieldhub.net import free_port
from support import auth as auth_support
from support.waiting import wait_until

__all__ = ["FieldhubProcess", "wait_until"]

FIELDHUB = Path(sys.executable).with_name("fieldhub")
START_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 3


class FieldhubProcess:
    """`fieldhub up` on free ports, with an external broker URL or its embedded one."""

    def __init__(
        self,
        *,
        data_dir: Path,
        mqtt_url: str | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        command_prefix: list[str] | None = None,
        auth: bool = False,
        scheme: str = "http",
    ) -> None:
        self.data_dir = data_dir
        # "https" when started with --tls-cert/--tls-key (the caller makes clients trust the CA,
        # e.g. SSL_CERT_FILE, which httpx honours).
        self.scheme = scheme
        self.mqtt_url = mqtt_url
        self.http_port = free_port()
        self.mqtt_port = None if mqtt_url else free_port()
        self.env = env or {}
        self.extra_args = extra_args or []
        # Run before `fieldhub` (e.g. `unshare` for a test of dropping root).
        self.command_prefix = command_prefix or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "fieldhub.log"
        # Authentication is off (FIELDHUB_AUTH=false, demo mode) unless asked for: the suite's
        # tests are about other things. With auth=True an admin is put in the database before
        # the first start (tests/support/auth.py); `admin_token` logs in as it and makes a token.
        self.auth = auth
        self.admin_password = auth_support.new_password() if auth else None
        self._admin_token: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "fieldhub.db"

    @property
    def db_url(self) -> str:
        """The database fieldhub uses: --db / FIELDHUB_DB when given, else the data dir's."""
        if "--db" in self.extra_args:
            return self.extra_args[self.extra_args.index("--db") + 1]
        return self.env.get("FIELDHUB_DB") or f"sqlite:///{self.db_path.absolute()}"

    @property
    def admin_token(self) -> str:
        """An admin API token (auth=True only), made once by logging in as the admin."""
        assert self.admin_password is not None, "start with auth=True"
        if self._admin_token is None:
            self._admin_token = auth_support.admin_token_by_login(
                self.base_url, auth_support.ADMIN_USERNAME, self.admin_password
            )
        return self._admin_token

    @property
    def headers(self) -> dict[str, str]:
        """What a request needs to be let in: the admin token with auth on, nothing without."""
        return {"Authorization": f"Bearer {self.admin_token}"} if self.auth else {}

    def start(self, *, wait_connected: bool = True) -> FieldhubProcess:
        # free_port() only finds a port free now; another process may take it before fieldhub
        # binds it (seen in a full suite run: "address already in use"). Then try other ports.
        for _ in range(PORT_ATTEMPTS - 1):
            try:
                return self._start(wait_connected=wait_connected)
            except AssertionError as error:
                if "address already in use" not in str(error):
                    raise
                self.http_port = free_port()
                self.mqtt_port = None if self.mqtt_url else free_port()
        return self._start(wait_connected=wait_connected)

    def _start(self, *, wait_connected: bool) -> FieldhubProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(FIELDHUB),
            "up",
            "--data-dir",
            str(self.data_dir),
            "--http-port",
            str(self.http_port),
        ]
        args += (
            ["--mqtt-url", self.mqtt_url] if self.mqtt_url else ["--mqtt-port", str(self.mqtt_port)]
        )
        env = {**os.environ, **self.env}
        env.setdefault("FIELDHUB_AUTH", "true" if self.auth else "false")
        if self.auth and self.admin_password is not None and not self.db_path.exists():
            auth_support.add_user(
                self.db_url, auth_support.ADMIN_USERNAME, self.admin_password, "admin"
            )
        if os.geteuid() == 0:
            # Started as root, fieldhub drops to an unprivileged user, which cannot enter pytest's
            # 0700 temp root: keep root unless the test chose (tests/security tests the drop).
            env.setdefault("FIELDHUB_RUN_AS", "root")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command_prefix + args + self.extra_args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"fieldhub exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            health = self.health()
            if health is not None and (health.get("mqtt_connected") or not wait_connected):
                return self
            time.sleep(0.1)
        raise AssertionError(
            f"fieldhub did not become healthy in {START_TIMEOUT_S} s:\n{self.log_tail()}"
        )

    def health(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{self.base_url}/healthz", timeout=2.0)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code in (200, 503) else None

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(
            f"{self.base_url}{path}", params=params, headers=self.headers, timeout=10.0
        )

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's value from /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.base_url}/metrics", headers=self.headers, timeout=5.0).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in (labels or {}).items()
                ):
                    total += sample.value
        return total

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"fieldhub ignored signal {sig}:\n{self.log_tail()}") from None
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
