"""Which URLs the browser may open.

The rules, checked for the first URL and again for every redirect hop:

1. Only `http` and `https` (no `file://`, `ftp://`, `data:` ...), and no control characters:
   the URL parser drops some of them (tab, newline) and the HTTP client refuses others, so a URL
   that holds one could be read differently by the check and by the connection.
2. The host must match `allow_hosts` when it is set: entries are `host` or `host:port`, with
   shell wildcards (`*.example.org`, `*`). `None` allows any public host.
3. A host that resolves to a private, loopback, link-local, multicast, reserved or unspecified
   address is refused unless an allowlist entry names it exactly (no wildcard): a local test
   server is opened with `allow_hosts=["127.0.0.1:8765"]`, but `*` never reaches the cloud
   metadata address 169.254.169.254 or a service on the training machine. IPv6 addresses that
   stand for an IPv4 address (IPv4-mapped `::ffff:127.0.0.1`, 6to4, Teredo, NAT64
   `64:ff9b::/96`) are judged by that IPv4 address; the deprecated IPv4-compatible form
   `::127.0.0.1` lies in the reserved `::/8` and is refused.

The address is resolved when the URL is checked; a host that changes its DNS answer between the
check and the connection (DNS rebinding) is not covered, so put untrusted browsing behind a
network-level egress filter as well.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
# Well-known NAT64 prefix: the last 32 bits are the IPv4 address a NAT64 gateway connects to.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class UrlPolicy:
    allow_hosts: tuple[str, ...] | None = None
    schemes: tuple[str, ...] = ("http", "https")

    def __post_init__(self) -> None:
        if self.allow_hosts is not None:
            object.__setattr__(self, "allow_hosts", tuple(h.lower() for h in self.allow_hosts))

    def check(self, url: str) -> str | None:
        """None if `url` may be opened, else a short reason for the model."""
        control = _CONTROL_CHARACTER.search(url)
        if control is not None:
            return f"Refused: the URL contains a control character (\\x{ord(control.group()):02x})."
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return f"Refused: '{url}' is not a valid URL."
        if parts.scheme.lower() not in self.schemes:
            return f"Refused: only {' and '.join(self.schemes)} URLs can be opened, not '{parts.scheme}:'."
        host = (parts.hostname or "").lower()
        if not host:
            return f"Refused: '{url}' has no host."
        try:
            host.encode("idna")  # what the resolver does first: empty or over-long labels fail
        except UnicodeError:
            return f"Refused: '{host}' is not a valid host name."
        port = port or (443 if parts.scheme.lower() == "https" else 80)
        if self.allow_hosts is not None and not any(
            fnmatch.fnmatchcase(host, entry) or fnmatch.fnmatchcase(f"{host}:{port}", entry)
            for entry in self.allow_hosts
        ):
            return f"Refused: host '{host}' is not in the allowlist."
        if self._named_exactly(host, port):
            return None
        private = _private_address(host)
        if private is not None:
            return f"Refused: host '{host}' resolves to a private address ({private})."
        return None

    def _named_exactly(self, host: str, port: int) -> bool:
        if self.allow_hosts is None:
            return False
        return any(
            not any(c in entry for c in "*?[") and entry in (host, f"{host}:{port}")
            for entry in self.allow_hosts
        )


def _private_address(host: str) -> str | None:
    """The first non-public address `host` resolves to, or None (also None if it does not resolve:
    the connection will then fail on its own)."""
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except (socket.gaierror, UnicodeError):
            return None
        addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
    for address in addresses:
        if not _is_public(address):
            return str(address)
    return None


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally reachable unicast and not reserved, and so is every IPv4 address it stands for.

    `is_global` alone is not enough: Python counts the reserved `::/8` (where `::127.0.0.1`
    lies) and 6to4 addresses of private IPv4 (`2002:7f00:1::`) as global.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded:
            return all(_is_public(ipv4) for ipv4 in embedded)
        if address.is_site_local:  # fec0::/10, deprecated but still routed by some stacks
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (a translation or tunnel), if any."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []
