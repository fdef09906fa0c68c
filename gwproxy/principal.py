"""Principal: who a request acts for, as the auth middleware established it, and the one check
of an admin-only handler (``require_admin``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from gwproxy.errors import Forbidden
from gwproxy.keys import PRINCIPAL

Role = Literal["user", "admin"]
ROLES: tuple[Role, ...] = ("user", "admin")


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    username: str
    role: Role
    via: Literal["jwt", "api_key", "anonymous"]
    key_id: int | None = None
    capture: bool = True  # record this user's conversations (an admin can turn it off per user)
    models: frozenset[str] | None = None  # the models it may name (its user's and key's lists); None: any

    def may_use(self, *names: str) -> bool:
        """Whether any of ``names`` (as asked, as served) is a model it may name."""
        return self.models is None or any(n in self.models for n in names)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS = Principal(0, "anonymous", "user", "anonymous")


def require_admin(request: web.Request) -> Principal:
    principal = request[PRINCIPAL]
    if not principal.is_admin:
        raise Forbidden("This route is for admins")
    return principal
