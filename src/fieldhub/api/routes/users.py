"""`/api/v1/users` (admin): the people who log in, their roles, passwords and whether they may.

Each change is audited; a password is never answered or recorded. A signed-in user changes
their own password with `POST /api/v1/auth/password`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, StringConstraints

from fieldhub.api.auth import ADMIN, AdminDep, AuthDep, client_address
from fieldhub.api.errors import BODY_RESPONSES, ERROR_RESPONSES, ErrorResponse
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.protocol.timestamps import format_us
from fieldhub.schemas import Time
from fieldhub.security.passwords import MAX_PASSWORD_CHARS
from fieldhub.security.roles import Role
from fieldhub.security.service import USERNAME_PATTERN
from fieldhub.store.types import UserRow

router = APIRouter(
    prefix="/api/v1/users",
    tags=["users"],
    dependencies=[ADMIN],
    route_class=AllMethodsRoute,
    responses={
        **ERROR_RESPONSES,
        **BODY_RESPONSES,
        409: {"model": ErrorResponse, "description": "Name taken, or the last enabled admin"},
    },
)

UsernamePath = Annotated[str, Path(pattern=USERNAME_PATTERN)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PASSWORD_CHARS)]


class UserPublic(BaseModel):
    """A user, without anything of their password."""

    username: str
    role: Role
    disabled: bool
    created_at: Time
    updated_at: Time

    @classmethod
    def of(cls, row: UserRow) -> UserPublic:
        return cls(
            username=row.username,
            role=Role(row.role),
            disabled=row.disabled,
            created_at=format_us(row.created_us),
            updated_at=format_us(row.updated_us),
        )


class UsersPublic(BaseModel):
    data: list[UserPublic]


class NewUser(BaseModel):
    """`POST /api/v1/users`."""

    model_config = ConfigDict(extra="forbid")

    username: Annotated[str, StringConstraints(pattern=USERNAME_PATTERN)]
    password: Password
    role: Role = Role.VIEWER


class UserChange(BaseModel):
    """`PATCH /api/v1/users/{username}`: what to change; fields left out stay."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    disabled: bool | None = None


class PasswordReset(BaseModel):
    """`PUT /api/v1/users/{username}/password`."""

    model_config = ConfigDict(extra="forbid")

    password: Password


@router.get("", response_model=UsersPublic)
async def list_users(auth: AuthDep) -> UsersPublic:
    """Every user, by name."""
    rows = sorted(await auth.list_users(), key=lambda r: r.username)
    return UsersPublic(data=[UserPublic.of(r) for r in rows])


@router.post("", response_model=UserPublic, status_code=201)
async def create_user(
    principal: AdminDep, body: NewUser, request: Request, auth: AuthDep
) -> UserPublic:
    """Add a user (role viewer unless given). 422 for a short or placeholder password."""
    row = await auth.create_user(
        principal, body.username, body.password, body.role, address=client_address(request)
    )
    return UserPublic.of(row)


@router.get("/{username}", response_model=UserPublic)
async def get_user(username: UsernamePath, auth: AuthDep) -> UserPublic:
    """One user."""
    return UserPublic.of(await auth.get_user(username))


@router.patch("/{username}", response_model=UserPublic)
async def update_user(
    principal: AdminDep, username: UsernamePath, body: UserChange, request: Request, auth: AuthDep
) -> UserPublic:
    """Change a user's role, or disable (their sessions end, the tokens they made are revoked)
    or enable them. 409 for the last enabled admin."""
    row = await auth.update_user(
        principal,
        username,
        role=body.role,
        disabled=body.disabled,
        address=client_address(request),
    )
    return UserPublic.of(row)


@router.put("/{username}/password", status_code=204, response_class=Response)
async def reset_password(
    principal: AdminDep,
    username: UsernamePath,
    body: PasswordReset,
    request: Request,
    auth: AuthDep,
) -> Response:
    """Set a user's password (their sessions end)."""
    await auth.reset_password(principal, username, body.password, address=client_address(request))
    return Response(status_code=204)


@router.delete("/{username}", status_code=204, response_class=Response)
async def delete_user(
    principal: AdminDep, username: UsernamePath, request: Request, auth: AuthDep
) -> Response:
    """Delete a user (their sessions end, the tokens they made are revoked). 409 for the last
    enabled admin."""
    await auth.delete_user(principal, username, address=client_address(request))
    return Response(status_code=204)
