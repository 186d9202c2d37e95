"""Who a request acts as: a signed-in user, an API token, or the demo principal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fieldhub.security.roles import Role

PrincipalKind = Literal["user", "token", "demo"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. `name` is what the audit log records as the actor."""

    name: str  # a username, "token:<token_id>", or "demo"
    role: Role
    kind: PrincipalKind
    csrf_token: str | None = None  # set for session (cookie) principals only
    token_id: str | None = None

    def allows(self, needed: Role) -> bool:
        """Whether this principal may do what `needed` may."""
        return self.role.at_least(needed)


# Demo mode (auth off, loopback only): every request is this principal, which may do everything
# because nothing is protected anyway; the audit log still says who ("demo").
DEMO_PRINCIPAL = Principal(name="demo", role=Role.ADMIN, kind="demo")
