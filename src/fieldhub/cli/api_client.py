"""HTTP calls to a running fieldhub's API, failures turned into one-line exits
(`fieldhub command` and `fieldhub export`)."""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

from fieldhub.cli.common import fail


@contextlib.contextmanager
def fieldhub_http(
    request: urllib.request.Request, *, url: str, timeout: float
) -> Iterator[http.client.HTTPResponse]:
    """An HTTP call to fieldhub at `url`, its open response to read inside the `with`.

    Failures exit 2 with one line: a 4xx/5xx with fieldhub's own error message, an unreachable
    server, or a connection that broke while the answer was being read.
    """
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
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
