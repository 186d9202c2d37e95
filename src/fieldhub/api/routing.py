"""A route class for paths served by several routes (GET and POST of one path are two here)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from fieldhub.api.errors import ErrorBody, ErrorResponse

# Path -> the methods of every route on it, for the Allow header of a 405.
_METHODS_BY_PATH: dict[str, set[str]] = {}


class AllMethodsRoute(APIRoute):
    """Answers a wrong method with a 405 whose `Allow` names every method of the path.

    Starlette's own 405 names only the methods of the first route that matched the path, and
    RFC 9110 wants all of them. Subclasses choose the error body's shape.
    """

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        _METHODS_BY_PATH.setdefault(self.path, set()).update(self.methods or ())

    def method_not_allowed(self, allowed: str) -> JSONResponse:
        """The 405's body (the API's error shape)."""
        body = ErrorResponse(error=ErrorBody(code="method_not_allowed", message=f"use {allowed}"))
        return JSONResponse(body.model_dump(exclude_none=True), status_code=405)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            allowed = ", ".join(sorted(_METHODS_BY_PATH.get(self.path, self.methods)))
            response = self.method_not_allowed(allowed)
            response.headers["Allow"] = allowed
            await response(scope, receive, send)
            return
        await super().handle(scope, receive, send)
