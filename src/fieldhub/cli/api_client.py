"""HTTP calls to a running fieldhub's API with an API token, failures turned into one-line exits
(`fieldhub command`, `fieldhub export`, `fieldhub devices`)."""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Annotated

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
