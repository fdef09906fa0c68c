"""Address: which client a request comes from, as seen through trusted proxies.

The client address is the peer's, unless the peer is a trusted proxy: then the right-most
``X-Forwarded-For`` entry that is not itself a trusted proxy (entries left of it are the client's
own claims, which anyone can forge). The limiter, the login guard and the credential guard all
key on this one answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(peer: str | None, forwarded: str | None, trusted: Sequence[Network]) -> str:
    if peer is None:
        return "unknown"
    if not forwarded or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a forged or garbled entry: fall back to what we know
    return hops[0] if hops else peer


def _trusted(addr: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
