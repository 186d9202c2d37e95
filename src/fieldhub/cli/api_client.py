"""HTTP calls to a running fieldhub's API with an API token, failures turned into one-line exits
(`fieldhub command`, `export`, `devices`, `rules`, `alarms`)."""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from fieldhub.cli.common import fail

# Every command that calls the API takes the same two options.
UrlOption = Annotated[str, typer.Option(help="fieldhub's HTTP address")]
TokenOption = Annotated[
    str | None,
    typer.Option(
        envvar="FIELDHUB_TOKEN",
        show_envvar=True,
        help="API token (created on the admin page or POST /api/v1/tokens)",
    ),
]
DEFAULT_URL = "http://127.0.0.1:8000"


@contextlib.contextmanager
def fieldhub_http(
    request: urllib.request.Request, *, url: str, timeout: float, token: str | None = None
) -> Iterator[http.client.HTTPResponse]:
    """An HTTP call to fieldhub at `url` (as `token`, if given), its open response to read
    inside the `with`.

    Failures exit 2 with one line: a 4xx/5xx with fieldhub's own error message, an unreachable
    server, or a connection that broke while the answer was being read.
    """
    if token is not None:
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        if exc.code == 401:
            message += (
                "; pass an API token with --token or FIELDHUB_TOKEN"
                if token is None
                else "; the token is wrong, expired or revoked"
            )
        raise fail(f"{exc.code}: {message}") from None
    except ValueError as exc:  # not an http(s) URL
        raise fail(f"--url {url!r}: {exc}") from None
    except OSError as exc:
        raise fail(f"cannot reach fieldhub at {url} ({exc}); is `fieldhub up` running?") from None
    with response:
        try:
            yield response
        except (OSError, http.client.HTTPException) as exc:
            raise fail(f"the connection to fieldhub at {url} broke mid-answer ({exc!r})") from None


def api_call(
    url: str,
    path: str,
    token: str | None,
    method: str = "GET",
    *,
    body: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = 30.0,
) -> Any:
    """One API call answering the JSON body (None for an empty one); failures exit as in
    `fieldhub_http`. `body` is sent as `content_type`."""
    request = urllib.request.Request(f"{url.rstrip('/')}{path}", data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", content_type)
    with fieldhub_http(request, url=url, token=token, timeout=timeout) as response:
        answer = response.read()
    return json.loads(answer) if answer else None
