"""Principal: who a request acts for, as the auth middleware established it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS = Principal(0, "anonymous", "user", "anonymous")
