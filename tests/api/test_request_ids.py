"""The request-id middleware (fieldhub/api/request_ids.py) around fieldhub's app class, in
process and under a real uvicorn: which incoming ids are kept, the header on every kind of
answer (a 500 included, which Starlette makes outside the app's own middleware), the id in the
error body and in the log lines made while serving the request. `fieldhub up` itself:
tests/integration/test_logs.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import HTTPException
from fastapi.responses import StreamingResponse

from fieldhub import errors as domain
from fieldhub import logs
from fieldhub.api.errors import install_error_handlers
from fieldhub.api.request_ids import HEADER, request_id_of
from fieldhub.app import FieldhubApp

served = logging.getLogger("fieldhub.test.served")


def make_app() -> FieldhubApp:
    app = FieldhubApp()
    install_error_handlers(app)

    @app.get("/ok")
    async def ok() -> dict[str, str | None]:
        served.info("serving /ok")
        return {"request_id": logs.request_id.get()}

    @app.get("/missing")
    async def missing() -> None:
        raise domain.NotFound("no such thing", code="not_found")

    @app.get("/forbidden")
    async def forbidden() -> None:
        raise HTTPException(403, "not yours")

    @app.get("/items/{item}")
    async def item(item: int) -> dict[str, int]:
        return {"item": item}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"a"
            yield b"b"

        return StreamingResponse(chunks())

    return app


def client() -> httpx.AsyncClient:
    # raise_app_exceptions=False: see the 500 the server would send, as a client does.
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def scope_with(value: str) -> dict[str, object]:
    return {"type": "http", "headers": [(b"x-request-id", value.encode("latin-1"))]}


def test_a_short_printable_incoming_id_is_kept() -> None:
    for kept in ("abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "a" * 128, "~!#$%&'*+-.^_`|"):
        assert request_id_of(scope_with(kept)) == kept


def test_other_incoming_ids_are_replaced() -> None:
    for refused in ("", "a" * 129, "has space", "tab\there", "ünïcode", "line\x7f"):
        made = request_id_of(scope_with(refused))
        assert made != refused
        assert len(made) == 32
        int(made, 16)
    assert request_id_of({"type": "http", "headers": []}) != request_id_of(
        {"type": "http", "headers": []}
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ok", 200),
        ("/missing", 404),
        ("/forbidden", 403),
        ("/items/not-a-number", 422),
        ("/no-such-route", 404),
        ("/boom", 500),
        ("/stream", 200),
    ],
)
async def test_every_answer_carries_the_id(path: str, status: int) -> None:
    async with client() as http:
        given = await http.get(path, headers={HEADER: "from-the-client"})
        made = await http.get(path)
    assert given.status_code == made.status_code == status
    assert given.headers[HEADER] == "from-the-client"
    assert len(made.headers[HEADER]) == 32
    if status >= 400:
        # The error shape has room for it: what a user pastes into a report names the request.
        assert given.json()["error"]["request_id"] == "from-the-client"
        assert made.json()["error"]["request_id"] == made.headers[HEADER]


async def test_a_500_is_the_error_shape_without_the_exception_s_text() -> None:
    async with client() as http:
        response = await http.get("/boom", headers={HEADER: "req-500"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "internal error; the log has it under request_id",
            "request_id": "req-500",
        }
    }


class JsonLines(logging.Handler):
    """Formats each record when it is logged, as the process's stderr handler does."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_the_handler_and_its_log_lines_see_the_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    handler = JsonLines()
    served.addHandler(handler)
    try:
        async with client() as http:
            response = await http.get("/ok", headers={HEADER: "req-42"})
    finally:
        served.removeHandler(handler)
    assert response.json() == {"request_id": "req-42"}
    assert [(e["message"], e["request_id"]) for e in handler.lines] == [("serving /ok", "req-42")]
    access = next(r for r in caplog.records if r.name == "fieldhub.access")
    assert access.getMessage().startswith("GET /ok 200 ")
    assert access.getMessage().endswith(" ms req-42")
    assert (access.method, access.path, access.status) == ("GET", "/ok", 200)  # type: ignore[attr-defined]
    assert access.request_id == "req-42"  # type: ignore[attr-defined]
    assert access.duration_ms >= 0  # type: ignore[attr-defined]
    # Outside the request, nothing is left set.
    assert logs.request_id.get() is None


async def test_the_access_line_leaves_out_the_query_string(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A query string can hold a token (docs/security.md): the access line has the path only."""
    caplog.set_level(logging.DEBUG, logger="fieldhub.access")
    async with client() as http:
        await http.get("/ok?token=secret")
    messages = [r.getMessage() for r in caplog.records if r.name == "fieldhub.access"]
    assert len(messages) == 1
    assert "secret" not in messages[0]


async def test_a_500_is_logged_with_its_status(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fieldhub.access")
    async with client() as http:
        await http.get("/boom", headers={HEADER: "req-500"})
    access = [r for r in caplog.records if r.name == "fieldhub.access"]
    assert [(r.status, r.request_id) for r in access] == [(500, "req-500")]  # type: ignore[attr-defined]


# A real uvicorn serving a route that raises, in a process of its own (logging's configuration
# is global), as `fieldhub up` configures it (server.py: no uvicorn log config, JSON format).
UVICORN_500 = """
import threading, time, httpx, uvicorn
from fieldhub import logs
from fieldhub.api.errors import install_error_handlers
from fieldhub.app import FieldhubApp
from fieldhub.net import free_port

logs.configure("info", "json")
app = FieldhubApp()
install_error_handlers(app)

@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("a bug")

port = free_port()
config = uvicorn.Config(app, port=port, log_config=None, access_log=False, log_level="info")
server = uvicorn.Server(config)
thread = threading.Thread(target=server.run)
thread.start()
while not server.started:
    time.sleep(0.01)
answer = httpx.get(f"http://127.0.0.1:{port}/boom", headers={"X-Request-ID": "boom-1"})
print(answer.status_code, answer.headers["X-Request-ID"], flush=True)
server.should_exit = True
thread.join()
"""


def test_the_server_s_line_about_a_500_carries_the_request_id() -> None:
    """uvicorn logs the exception after the app has answered: the middleware leaves the id set
    for that line (the request's task ends right after)."""
    done = subprocess.run(
        [sys.executable, "-c", UVICORN_500], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "500 boom-1\n"
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    failed = [e for e in lines if e["level"] == "error"]
    assert len(failed) == 1, lines
    assert failed[0]["logger"] == "uvicorn.error"
    assert failed[0]["request_id"] == "boom-1"
    assert failed[0]["exception"].rstrip().endswith("RuntimeError: a bug")
