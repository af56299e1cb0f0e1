"""Errors a user can act on: each names the file, line, step or key at fault."""

from __future__ import annotations


class CurateError(Exception):
    """Base class; the CLI prints these as one line, without a traceback."""


class InputError(CurateError):
    """The input cannot be read: missing file, unknown format, or a bad row with on_error='raise'."""


class RowError(CurateError):
    """One input row is unusable; the reader turns it into a reject (or an InputError)."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        self.message = message
        super().__init__(f"field {field!r}: {message}" if field else message)


class RecipeError(CurateError):
    """A recipe or step configuration is invalid; the message names the key."""


class PipelineError(CurateError):
    """The step chain is inconsistent (a step reads a column nobody writes) or a step misbehaved."""


def json_error_text(e) -> str:
    """``msg at char N`` for a stdlib ``json.JSONDecodeError`` (whose msg may end in "at" already:
    "Unterminated string starting at")."""
    return f"{e.msg} char {e.pos}" if e.msg.endswith(" at") else f"{e.msg} at char {e.pos}"
