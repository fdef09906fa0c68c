"""Throttle: refuses logins for a username or a client address after repeated failures — pure,
the clock passed in.

After ``max_failures`` failed attempts within ``lockout`` seconds, that username (or address) is
refused until ``lockout`` seconds after its latest failure; a successful login clears its
username. State lives in this process; entries expire on their own.
"""

from __future__ import annotations


class LoginThrottle:
    def __init__(self, max_failures: int, lockout: float) -> None:
        self.max_failures = max_failures
        self.lockout = lockout
        self._failures: dict[str, list[float]] = {}

    def retry_after(self, keys: tuple[str, ...], now: float) -> float:
        """Seconds until a login for ``keys`` may be tried again; 0 when it may now."""
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                wait = max(wait, times[-1] + self.lockout - now)
        return wait

    def failed(self, keys: tuple[str, ...], now: float) -> None:
        for key in keys:
            self._recent(key, now).append(now)
        if len(self._failures) > 100_000:
            for key in [k for k in self._failures if not self._recent(k, now)]:
                del self._failures[key]

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if now - t < self.lockout]
        self._failures[key] = times
        return times
