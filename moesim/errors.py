"""Errors that are the user's mistake: printed as one line, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


# a field name or value from the user's file may hold a newline: escaped, so the error stays one line
_ONE_LINE = {c: f"\\x{c:02x}" for c in (*range(32), 0x7F, 0x85)} | {10: "\\n", 13: "\\r", 9: "\\t",
                                                                   0x2028: "\\u2028", 0x2029: "\\u2029"}


class UserError(Exception):
    """Bad input from the user (file, flag or value).

    ``str(err)`` is the one line the CLI prints: ``FILE: FIELD: MESSAGE`` with the parts that
    are known. ``MESSAGE`` says what was expected and, where useful, what was found.
    """

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.field = field

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.field) if p]
        return ": ".join([*parts, self.message]).translate(_ONE_LINE)

    def at(self, *, file: str | Path | None = None, field: str | None = None) -> UserError:
        """The same error with the file (and a field prefix) filled in where still unknown."""
        new_field = self.field
        if field:
            new_field = f"{field}.{self.field}" if self.field else field
        return UserError(self.message, file=self.file or (str(file) if file else None), field=new_field)
