"""What a webhook endpoint's URL may be, so that tidings cannot be made to post into its own
network (SSRF).

A URL must be http or https, name a host, and carry no credentials. Its host must resolve
only to public addresses: loopback, private, link-local, multicast, unspecified, reserved and
other non-global addresses are refused (an IPv4-mapped, 6to4 or Teredo IPv6 address counts as
the IPv4 address it carries), unless WEBHOOK_ALLOW_PRIVATE_URLS. The check runs when an
endpoint is created or changed (`check`), and again at every delivery, where the worker
connects to the very addresses it checked (worker/webhooks.py `GuardedResolver`): a name that
resolves elsewhere by then (DNS rebinding) gets a failed attempt, never a request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse

from shared import errors

MAX_URL_LENGTH = 2000
# Resolving a host at create/update: a resolver that does not answer is a refusal, not a hang.
RESOLVE_TIMEOUT_S = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The most telling name first: Python counts loopback and link-local ranges as private too.
_REFUSED_KINDS = (
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_unspecified", "unspecified"),
    ("is_reserved", "reserved"),
    ("is_private", "private"),
)


class UrlRefused(errors.ValidationFailed):
    """A webhook URL tidings will not post to; names the `url` field."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"url {problem}", fields={"url": [problem]})
        self.problem = problem


def refused_kind(ip: IPAddress) -> str | None:
    """Why tidings will not connect to this address (None: it may)."""
    if isinstance(ip, ipaddress.IPv6Address):
        carried = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if carried is not None:
            return refused_kind(carried)
    for attribute, kind in _REFUSED_KINDS:
        if getattr(ip, attribute):
            return kind
    if not ip.is_global:  # shared (100.64/10), documentation and other special ranges
        return "non-public"
    return None


def parse(url: str) -> urllib.parse.SplitResult:
    """The URL's parts, or UrlRefused for one that is not an http(s) URL without credentials."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"must be at most {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise UrlRefused("must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise UrlRefused("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("must be an http or https URL")
    if not parts.hostname:
        raise UrlRefused("must name a host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("must not carry credentials (user:password@)")
    return parts


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def refuse_address(host: str, ip: IPAddress) -> None:
    kind = refused_kind(ip)
    if kind is not None:
        shown = host if host == str(ip) else f"{host} ({ip})"
        raise UrlRefused(f"points at a {kind} address, {shown}; set WEBHOOK_ALLOW_PRIVATE_URLS=true to allow it")


async def check(url: str, *, allow_private: bool) -> None:
    """Refuse (UrlRefused) a URL tidings must not post to; resolves its host unless it is an
    address or private addresses are allowed."""
    parts = parse(url)
    if allow_private:
        return
    host = parts.hostname or ""
    literal = literal_address(host)
    if literal is not None:
        refuse_address(host, literal)
        return
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        raise UrlRefused(f"names a host that does not resolve: {host}") from None
    for info in infos:
        refuse_address(host, ipaddress.ip_address(info[4][0]))
