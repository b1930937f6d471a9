"""Validation that reports every problem at once, in the words of a Rails model.

The Transactionals API is modelled on a Rails product whose 422 body is
`{"errors": {"field": ["can't be blank"]}}`: all problems together, keyed by the
model's attribute names. `FieldErrors` collects them and raises one `ValidationFailed`.
"""

from __future__ import annotations

from shared import addresses, errors, templating

BLANK = "can't be blank"
INVALID = "is invalid"
TAKEN = "has already been taken"
NOT_FOUND = "not found"
LINE_BREAK = "can't contain line breaks"


def too_long(maximum: int) -> str:
    return f"is too long (maximum is {maximum} characters)"


class FieldErrors:
    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}
        # Liquid fields still to parse: all at once, off the event loop when large (`check_liquid`).
        self._liquid: dict[str, str] = {}

    def add(self, field: str, problem: str) -> None:
        self.fields.setdefault(field, []).append(problem)

    def __contains__(self, field: str) -> bool:
        return field in self.fields

    async def check_liquid(self) -> None:
        """Parse the fields given as `liquid`; record those that do not parse. Call before
        `raise_if_any`."""
        pending, self._liquid = self._liquid, {}
        for field, problems in (await templating.check_syntax_async(pending)).items():
            for problem in problems:
                self.add(field, problem)

    def raise_if_any(self) -> None:
        if self.fields:
            first = next(iter(self.fields))
            raise errors.ValidationFailed(f"{first} {self.fields[first][0]}", fields=self.fields)

    def text(
        self,
        field: str,
        value: str | None,
        *,
        maximum: int,
        required: bool = False,
        header: bool = False,
        liquid: bool = False,
    ) -> str | None:
        """A string field: blank is None (or an error when required); the value otherwise.
        `header`: becomes a mail header, so a literal line break is refused (no injection).
        `liquid`: must parse as a Liquid template (checked by `check_liquid`)."""
        if value is None or not value.strip():
            if required:
                self.add(field, BLANK)
            return None
        if len(value) > maximum:
            self.add(field, too_long(maximum))
        elif header and addresses.has_line_break(value):
            self.add(field, LINE_BREAK)
        elif liquid:
            self._liquid[field] = value
        return value

    def email(self, field: str, value: str | None, *, required: bool = False) -> str | None:
        """A normalized email address (domain lower-cased), or None after recording why not."""
        if value is None or not value.strip():
            if required:
                self.add(field, BLANK)
            return None
        if len(value) > 320 or addresses.has_line_break(value):
            self.add(field, INVALID)
            return None
        try:
            return addresses.normalize_email(value)
        except addresses.InvalidAddress:
            self.add(field, INVALID)
            return None
