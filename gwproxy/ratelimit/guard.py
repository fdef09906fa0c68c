"""Guard: the buckets that slow password guessing and credential probing, in the limiter's store
(Redis when configured, so every replica shares them; in process otherwise).

Logins. Every attempt is *reserved* before the password is checked (one atomic take from three
buckets), so concurrent guesses cannot all slip through before the first failure is recorded:
- ``username + address``: ``login_max_failures`` attempts, refilling over ``login_lockout_seconds``
  (one more try every lockout / max_failures seconds after the burst). Only this pair is slowed
  hard: an attacker locks out their own address for that username, nobody else;
- ``address``: four times that, over the same window, for one address trying many usernames;
- ``username`` from anywhere: four times that as a burst, then one attempt every
  ``login_username_interval`` seconds — the gentle delay that bounds a distributed attack on
  one account without handing anyone a lockout of it (its owner waits at most that interval).
A successful login refunds its reservation and refills its ``username + address`` bucket.

Credentials. An API key or access token that is not in the authenticator's cache is checked first
— a key by one indexed lookup of its public prefix and a digest comparison, a token by its
signature — and only a credential found invalid is charged to its address
(``invalid_credentials_per_minute``); past that allowance an invalid one is answered 429 with
``Retry-After`` instead of 401. A valid credential is never refused for what others sent from its
address: behind a NAT, or a proxy not listed in ``trusted_proxies``, one careless script slows
itself and locks out nobody. Cached credentials never reach the guard: the hot path pays nothing.

Keys name a username by a hash of it (bounded, any characters) and an address as resolved
through ``trusted_proxies``.
"""

from __future__ import annotations

import hashlib

from gwproxy.config import AuthConfig
from gwproxy.errors import TooManyRequests
from gwproxy.ratelimit.bucket import Limit
from gwproxy.ratelimit.store import BucketStore, Ticket

ADDRESS_FACTOR = 4  # the address and per-username bursts, in multiples of login_max_failures


def _name(username: str) -> str:
    return hashlib.sha256(username.encode(errors="surrogatepass")).hexdigest()[:32]


class Guard:
    def __init__(self, store: BucketStore, cfg: AuthConfig) -> None:
        self.store = store
        burst = cfg.login_max_failures
        self.pair = Limit.per_window(burst, cfg.login_lockout_seconds)
        self.address = Limit.per_window(burst * ADDRESS_FACTOR, cfg.login_lockout_seconds)
        self.username = Limit(burst * ADDRESS_FACTOR, 1.0 / cfg.login_username_interval)
        self.probes = Limit.per_window(cfg.invalid_credentials_per_minute, 60.0)

    def _login_buckets(self, username: str, address: str) -> tuple[list[str], list[Limit]]:
        name = _name(username)
        keys = [f"gwlg:ua:{name}:{address}", f"gwlg:a:{address}", f"gwlg:u:{name}"]
        return keys, [self.pair, self.address, self.username]

    async def reserve_login(self, username: str, address: str) -> Ticket:
        """Take one attempt from each login bucket, or raise ``TooManyRequests``."""
        keys, limits = self._login_buckets(username, address)
        decision, ticket = await self.store.admit(keys, limits, [1.0] * len(keys), None)
        if not decision.allowed or ticket is None:
            raise TooManyRequests("Too many login attempts: try again later", retry_after=decision.retry_after)
        return ticket

    async def login_succeeded(self, ticket: Ticket, username: str, address: str) -> None:
        """Refund the attempt, and forget this address's earlier failures for this username."""
        keys, limits = self._login_buckets(username, address)
        await ticket.store.settle(ticket, keys[0], limits[0], -limits[0].capacity)
        for key, limit in zip(keys[1:], limits[1:], strict=True):
            await ticket.store.settle(ticket, key, limit, -1.0)

    async def check_failed(self, address: str) -> None:
        """Charge an invalid credential to ``address``; past its allowance raise ``TooManyRequests``
        (the caller then answers that instead of 401)."""
        decision, _ = await self.store.admit([f"gwlg:c:{address}"], [self.probes], [1.0], None)
        if not decision.allowed:
            raise TooManyRequests(
                "Too many invalid credentials from this address: try again later", retry_after=decision.retry_after
            )
