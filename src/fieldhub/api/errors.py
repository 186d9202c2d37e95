"""API errors: one small tree with machine-readable codes, one handler mapping it to JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from fieldhub.store.base import StoreError


class ErrorBody(BaseModel):
    """The body of every error response."""

    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """`{"error": {...}}`: the shape of every 4xx/5xx answer."""

    error: ErrorBody


class ApiError(Exception):
    """An error the API reports to the caller."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class NotFound(ApiError):
    """The resource does not exist."""

    status = 404
    code = "not_found"


class InvalidParameter(ApiError):
    """A parameter is well-formed for the schema but wrong for the request (bad range...)."""

    status = 422
    code = "invalid_parameter"


class PayloadTooLarge(ApiError):
    """The request body is over the limit."""

    status = 413
    code = "payload_too_large"


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
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
    """Every error leaves as `{"error": {"code", "message"}}` with a fitting status."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _json(exc.status, exc.code, exc.message, headers=exc.headers)

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

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreError, store_error)
