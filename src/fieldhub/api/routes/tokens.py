"""`/api/v1/tokens` (admin): API tokens for programs, `Authorization: Bearer fh_...`.

A token is answered once, when created; lists show its public id, name, role, expiry and last
use (written at most once a minute per token), never the token or its hash."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from fieldhub.api.auth import ADMIN, AdminDep, AuthDep, client_address
from fieldhub.api.errors import BODY_RESPONSES, ERROR_RESPONSES
from fieldhub.api.params import parse_time
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.clock import US_PER_S
from fieldhub.errors import Invalid
from fieldhub.protocol.timestamps import format_us
from fieldhub.schemas import Time
from fieldhub.security.roles import Role
from fieldhub.security.service import TOKEN_NAME_MAX_CHARS
from fieldhub.store.types import ApiTokenRow

router = APIRouter(
    prefix="/api/v1/tokens",
    tags=["tokens"],
    dependencies=[ADMIN],
    route_class=AllMethodsRoute,
    responses={**ERROR_RESPONSES, **BODY_RESPONSES},
)

TokenIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]
MAX_EXPIRY_S = 10 * 365 * 86400


class TokenPublic(BaseModel):
    """A token as listed: everything but the secret."""

    token_id: str
    name: str
    role: Role
    created_by: str
    created_at: Time
    expires_at: Time | None
    last_used_at: Time | None
    revoked_at: Time | None

    @classmethod
    def of(cls, row: ApiTokenRow) -> TokenPublic:
        return cls(
            token_id=row.token_id,
            name=row.name,
            role=Role(row.role),
            created_by=row.created_by,
            created_at=format_us(row.created_us),
            expires_at=format_us(row.expires_us) if row.expires_us is not None else None,
            last_used_at=format_us(row.last_used_us) if row.last_used_us is not None else None,
            revoked_at=format_us(row.revoked_us) if row.revoked_us is not None else None,
        )


class NewTokenPublic(TokenPublic):
    """A token just made: `token` is shown this once, store it now."""

    token: str


class TokensPublic(BaseModel):
    data: list[TokenPublic]


class NewToken(BaseModel):
    """`POST /api/v1/tokens`. Expiry: `expires_at` or `expires_in_s`, or neither (never)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=TOKEN_NAME_MAX_CHARS)]
    role: Role = Role.VIEWER
    expires_at: (
        Annotated[str, StringConstraints(min_length=1, max_length=64)] | StrictInt | None
    ) = Field(default=None, description="ISO 8601 or epoch")
    expires_in_s: Annotated[float, Field(gt=0, le=MAX_EXPIRY_S)] | None = None


@router.get("", response_model=TokensPublic)
async def list_tokens(auth: AuthDep) -> TokensPublic:
    """Every token, newest first, revoked ones included (with when)."""
    rows = sorted(await auth.list_tokens(), key=lambda r: r.created_us, reverse=True)
    return TokensPublic(data=[TokenPublic.of(r) for r in rows])


@router.post("", response_model=NewTokenPublic, status_code=201)
async def create_token(
    principal: AdminDep, body: NewToken, request: Request, auth: AuthDep
) -> NewTokenPublic:
    """Make a token with a role (viewer unless given) and an optional expiry; the answer holds
    the token, which is never shown again."""
    if body.expires_at is not None and body.expires_in_s is not None:
        raise Invalid("give expires_at or expires_in_s, not both")
    expires_us: int | None = None
    if body.expires_at is not None:
        expires_us = parse_time("expires_at", str(body.expires_at))
    elif body.expires_in_s is not None:
        expires_us = auth.clock.now_us() + int(body.expires_in_s * US_PER_S)
    token, row = await auth.create_token(
        principal,
        name=body.name,
        role=body.role,
        expires_us=expires_us,
        address=client_address(request),
    )
    return NewTokenPublic(**TokenPublic.of(row).model_dump(), token=token)


@router.delete("/{token_id}", response_model=TokenPublic)
async def revoke_token(
    principal: AdminDep, token_id: TokenIdPath, request: Request, auth: AuthDep
) -> TokenPublic:
    """Revoke a token: refused from the next request on. Revoking it again changes nothing."""
    row = await auth.revoke_token(principal, token_id, address=client_address(request))
    return TokenPublic.of(row)
