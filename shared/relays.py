"""The SMTP relays mail goes through: `SMTP_RELAYS`, or the one relay of `SMTP_HOST` & co.

`SMTP_RELAYS` is a comma-separated list, in order of preference, of
`smtp://[user:pass@]host:port[?tls=none|starttls|tls&max_per_s=N]`. A user or password
holding `:`, `@`, `/`, `?`, `#` or `,` is percent-encoded (`%40` for `@`, `%2C` for `,`).

A list that does not parse is refused at start-up with one line naming the relay (by its
position and host:port, never its credentials) and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import math
import urllib.parse
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from shared.config import Settings

Tls = Literal["none", "starttls", "tls"]
TLS_MODES: tuple[Tls, ...] = ("none", "starttls", "tls")
# What a relay without `?tls=` uses: STARTTLS, required, as SMTP_TLS's default.
DEFAULT_TLS: Tls = "starttls"


@dataclasses.dataclass(frozen=True, slots=True)
class Relay:
    host: str
    port: int
    tls: Tls = DEFAULT_TLS
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    # A ceiling shared by every worker process together; None: none.
    max_per_s: float | None = None

    @property
    def name(self) -> str:
        """host:port: how logs and metric labels name the relay (never its credentials)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def relays(settings: Settings) -> list[Relay]:
    """The relays in order of preference (validated already by `Settings.validate`)."""
    if settings.smtp_relays.strip():
        return parse_relays(settings.smtp_relays)
    return [
        Relay(
            host=settings.smtp_host,
            port=settings.smtp_port,
            tls=settings.smtp_tls,
            username=settings.smtp_username,
            password=settings.smtp_password,
        )
    ]


def parse_relays(text: str) -> list[Relay]:
    """Every relay of an `SMTP_RELAYS` value; ValueError names the first one that is wrong."""
    found: list[Relay] = []
    items = text.split(",")
    for position, item in enumerate(items, start=1):
        relay = _parse_one(item.strip(), position)
        if any(r.name == relay.name for r in found):
            raise ValueError(f"SMTP_RELAYS: relay {position} ({relay.name}) is listed twice")
        found.append(relay)
    return found


def _parse_one(item: str, position: int) -> Relay:
    def wrong(what: str, name: str | None = None) -> ValueError:
        label = f"relay {position} ({name})" if name else f"relay {position}"
        return ValueError(f"SMTP_RELAYS: {label}: {what}")

    if not item:
        raise wrong("is empty (two commas in a row, or one at an end)")
    parts = urllib.parse.urlsplit(item)
    # host:port alone, for the message: never the user or password before an `@`.
    shown = parts.netloc.rpartition("@")[2] or None
    if parts.scheme != "smtp":
        scheme = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise wrong(f"must start with smtp:// (not {scheme})", shown)
    host = parts.hostname
    if not host:
        raise wrong("has no host", shown)
    try:
        port = parts.port
    except ValueError:
        raise wrong("the port must be a number from 1 to 65535", shown) from None
    if port is None or port == 0:
        raise wrong("has no port (smtp://host:port)", shown)
    if parts.path not in ("", "/") or parts.fragment:
        raise wrong("takes no path (only ?tls= and &max_per_s= after host:port)", shown)
    try:
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise wrong(f"cannot read the options {parts.query!r}", shown) from None
    unknown = sorted(set(query) - {"tls", "max_per_s"})
    if unknown:
        raise wrong(f"unknown option {unknown[0]!r} (only tls and max_per_s)", shown)
    for option, values in query.items():
        if len(values) > 1:
            raise wrong(f"{option} is given twice", shown)
    tls = query.get("tls", [DEFAULT_TLS])[0]
    if tls not in TLS_MODES:
        raise wrong(f"tls must be none, starttls or tls, not {tls!r}", shown)
    max_per_s: float | None = None
    if "max_per_s" in query:
        raw = query["max_per_s"][0]
        try:
            max_per_s = float(raw)
        except ValueError:
            max_per_s = math.nan
        if not (math.isfinite(max_per_s) and max_per_s > 0):
            raise wrong(f"max_per_s must be a positive number, not {raw!r}", shown)
    return Relay(
        host=host,
        port=port,
        tls=tls,
        username=urllib.parse.unquote(parts.username or ""),
        password=urllib.parse.unquote(parts.password or ""),
        max_per_s=max_per_s,
    )
