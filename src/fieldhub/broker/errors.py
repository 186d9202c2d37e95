"""The embedded broker's errors: each has a stable `code` and a message that says what to do."""

from __future__ import annotations

from pathlib import Path

INSTALL_HINT = (
    "install it: sudo apt-get install mosquitto (Debian/Ubuntu), "
    "or pass --mqtt-url to use an external broker"
)


class BrokerError(Exception):
    """Base class of the embedded broker's errors."""

    code = "broker_error"


class MosquittoNotFound(BrokerError):
    """No Mosquitto executable was found; the message says how to get one."""

    code = "mosquitto_not_found"

    def __init__(self, *, searched: tuple[str, ...]) -> None:
        self.searched = searched
        super().__init__(f"mosquitto not found (looked at: {', '.join(searched)}); {INSTALL_HINT}")


class BrokerStartError(BrokerError):
    """Mosquitto could not be started, exited during startup, or never listened."""

    code = "broker_start_failed"

    def __init__(
        self,
        reason: str,
        *,
        returncode: int | None = None,
        log_path: Path | None = None,
        log_tail: str = "",
    ) -> None:
        self.reason = reason
        self.returncode = returncode
        self.log_path = log_path
        self.log_tail = log_tail
        message = f"mosquitto failed to start: {reason}"
        if returncode is not None:
            message += f" (exit code {returncode})"
        if log_tail:
            message += f"\nlast lines of {log_path}:\n{log_tail}"
        super().__init__(message)
