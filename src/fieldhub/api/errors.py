"""API errors: one small tree with machine-readable codes, one handler mapping it to JSON.

The domain raises `fieldhub.errors` (Invalid, NotFound, Conflict...), which know nothing of HTTP;
`DOMAIN_STATUS` below is the one place that says which status each kind answers with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fieldhub import errors as domain
from fieldhub import logs
from fieldhub.store.types import StoreError


def _request_id() -> str | None:
    return logs.request_id.get()


class ErrorBody(BaseModel):
    """The body of every error response."""

    code: str
    message: str
    details: list[dict[str, Any]] | None = None
    # The X-Request-ID of the answer (api/request_ids.py), in the body too: what a user pastes
    # into a report is the body, and with it an operator finds the request's log lines. A
    # default from the request's context, so every error built anywhere carries it.
    request_id: str | None = Field(
        default_factory=_request_id,
        description="The request's id, also in its X-Request-ID header and its log lines",
    )


class ErrorResponse(BaseModel):
    """`{"error": {...}}`: the shape of every 4xx/5xx answer."""

    error: ErrorBody


# Each kind of domain error and the HTTP status it answers with; a subclass answers as its nearest
# listed base, and a kind not listed as 500 (a bug: every kind a caller can act on is here).
DOMAIN_STATUS: dict[type[domain.FieldhubError], int] = {
    domain.Invalid: 422,
    domain.Unauthenticated: 401,
    domain.Forbidden: 403,
    domain.NotFound: 404,
    domain.Conflict: 409,
    domain.TooLarge: 413,
    domain.Overloaded: 429,
    domain.Unavailable: 503,
}


def domain_status(exc: domain.FieldhubError) -> int:
    """The HTTP status for a domain error (`DOMAIN_STATUS`, by its nearest listed kind)."""
    for kind in type(exc).__mro__:
        status = DOMAIN_STATUS.get(kind)
        if status is not None:
            return status
    return 500


# RFC 9110 wants a challenge on every 401; Bearer is the scheme programs use (the dashboard's
# cookie is not an HTTP authentication scheme, so it has no challenge of its own).
WWW_AUTHENTICATE = 'Bearer realm="fieldhub"'


def domain_headers(exc: domain.FieldhubError) -> dict[str, str] | None:
    """Headers a domain error adds: `Retry-After` (whole seconds) for Overloaded (Throttled
    included), `WWW-Authenticate` for Unauthenticated."""
    if isinstance(exc, domain.Overloaded):
        return {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, domain.Unauthenticated):
        return {"WWW-Authenticate": WWW_AUTHENTICATE}
    return None


# What every route behind authentication may answer (api/auth.py); in ERROR_RESPONSES too.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No credentials, or ones that do not check"},
    403: {"model": ErrorResponse, "description": "Below the role this needs, or no CSRF token"},
}

# For routes that take a JSON body: what a body that is not JSON answers.
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not JSON"},
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    404: {"model": ErrorResponse, "description": "Not found"},
    422: {"model": ErrorResponse, "description": "Invalid request"},
}


def _json(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error": {"code", "message", "request_id"}}` with a fitting
    status, an unexpected exception as a 500 `internal_error`."""

    async def domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, domain.FieldhubError)
        return _json(domain_status(exc), exc.code, exc.message, headers=domain_headers(exc))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))}
            for err in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"][1:] or first["loc"])
        return _json(422, "invalid_request", f"{where}: {first['msg']}", details)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        # Keep the exception's headers: a 405 must say which methods are allowed (RFC 9110).
        return _json(
            exc.status_code, f"http_{exc.status_code}", str(exc.detail), headers=exc.headers
        )

    async def store_error(request: Request, exc: Exception) -> JSONResponse:
        return _json(503, "store_unavailable", f"the database is not answering: {exc}")

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug. Starlette's ServerErrorMiddleware answers with this, then re-raises, and the
        # server logs the traceback under the request's id: the client gets that id (body and
        # X-Request-ID) to report, not the exception's text, which may hold internals.
        return _json(500, "internal_error", "internal error; the log has it under request_id")

    app.add_exception_handler(domain.FieldhubError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(Exception, internal_error)
