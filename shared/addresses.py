"""Email and phone parsing: email-validator and phonenumbers, never hand-written regexes."""

from __future__ import annotations

import functools

import email_validator
import phonenumbers

# A self-hosted sender legitimately mails `.test` / `.local` / `localhost` hosts (staging,
# on-premises, `tidings dev`); the other special-use names (`invalid`, `onion`, ...) stay refused.
email_validator.SPECIAL_USE_DOMAIN_NAMES[:] = [
    name for name in email_validator.SPECIAL_USE_DOMAIN_NAMES if name not in ("test", "local", "localhost")
]


class InvalidAddress(ValueError):
    pass


@functools.lru_cache(maxsize=65536)
def normalize_email(raw: str) -> str:
    """Syntax-checked address with the domain lower-cased (the local part is left as given:
    RFC 5321 lets servers treat it case-sensitively). No DNS lookups on the hot path."""
    try:
        result = email_validator.validate_email(raw.strip(), check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from exc
    return f"{result.local_part}@{result.ascii_domain.lower()}"


@functools.lru_cache(maxsize=65536)
def normalize_phone(raw: str) -> str:
    """E.164 (`+14155550123`). Numbers must carry their country code: a service that takes
    triggers from anywhere cannot guess a default region."""
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+"):
        text = "+" + text
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidAddress(f"not a phone number: {exc}") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidAddress("not a valid phone number (include the country code, e.g. +14155550123)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def has_line_break(value: str | None) -> bool:
    return value is not None and ("\r" in value or "\n" in value)


def fold_header(value: str) -> str:
    """A rendered header value never carries a line break: each run becomes one space."""
    return " ".join(value.replace("\r", "\n").split("\n")) if has_line_break(value) else value


# Characters that, outside quotes, would make a display name more than a name: another
# mailbox (`,`), a group (`:` `;`), an address or route (`<` `>` `@`), a comment, a quote.
_NAME_SPECIALS = frozenset(',;:<>@()[]\\"')


def single_mailbox(raw: str) -> tuple[str, str]:
    """(display name, address) of a value that is exactly one mailbox: `addr@host`,
    `Name <addr@host>` or `"Any, name" <addr@host>`; InvalidAddress for anything else (two
    mailboxes, a group, an address that email-validator refuses). The address is normalized
    as `normalize_email` does."""
    value = raw.strip()
    if "<" not in value and ">" not in value:
        return "", normalize_email(value)
    name, bracket, rest = value.rpartition("<")
    if not bracket or not rest.endswith(">") or ">" in rest[:-1]:
        raise InvalidAddress(f"not one mailbox (Name <address>): {raw!r}")
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        quoted = name[1:-1]
        unquoted = quoted.replace('\\"', "").replace("\\\\", "")
        if '"' in unquoted:
            raise InvalidAddress(f"not one mailbox (a quote ends the name early): {raw!r}")
        name = quoted.replace('\\"', '"').replace("\\\\", "\\")
    elif _NAME_SPECIALS.intersection(name):
        raise InvalidAddress(f"not one mailbox (quote a name that has , ; : < > @ or quotes): {raw!r}")
    return name, normalize_email(rest[:-1])
