"""Roles: viewer < operator < admin; each may do everything the one before it may."""

from __future__ import annotations

from enum import StrEnum

from fieldhub.errors import Invalid


class Role(StrEnum):
    """What a user or token may do.

    viewer: read everything (every GET). operator: + send and cancel commands (+ acknowledge
    alarms). admin: + users, tokens, device credentials, the audit log (+ rules, OTA).
    """

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Its place in viewer < operator < admin (0, 1, 2)."""
        return _RANK[self]

    def at_least(self, needed: Role) -> bool:
        """Whether this role may do what `needed` may."""
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def at_least(role: Role, needed: Role) -> bool:
    """Whether `role` may do what `needed` may (viewer < operator < admin)."""
    return role.at_least(needed)


def parse_role(value: str) -> Role:
    """The role named `value` (as stored or sent); Invalid naming the roles otherwise."""
    try:
        return Role(value)
    except ValueError:
        names = ", ".join(r.value for r in Role)
        raise Invalid(f"unknown role {value!r}; roles: {names}") from None
