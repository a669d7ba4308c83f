"""Passwords never leave the process: the one place that masks them in database URLs, command
lines and free text before anything is stored, printed, logged or rendered.

A database URL is re-rendered by SQLAlchemy with the password hidden (``user:***@host``). Free
text (a stored command line, an error message, a traceback) is scanned for URL-looking tokens
with ``user:password@`` and for libpq ``password=...`` keywords. Masking errs on the side of
hiding: a password with an unescaped ``@`` is hidden up to the token's last ``@``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"
# scheme://user:PASSWORD@ ; the password runs to the last "@" before whitespace or a quote.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)[^\s'\"]*@")
# libpq keyword form: password=secret (in a DSN or a driver's message).
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'[^']*'|\"[^\"]*\"|[^\s'\"]+)", re.IGNORECASE)
DB_OPTIONS = ("--db",)


def mask_secrets(text: str) -> str:
    """``text`` with every password of a URL (``scheme://user:pw@``) or DSN (``password=pw``) masked."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)


def mask_url(url: str) -> str:
    """A database URL as SQLAlchemy renders it with the password hidden (also when unparsable)."""
    try:
        rendered = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        rendered = url
    return mask_secrets(rendered)


def mask_command(argv: Sequence[str]) -> str:
    """A command line, as one string, with the value of ``--db URL`` / ``--db=URL`` rendered by
    :func:`mask_url` and every other argument by :func:`mask_secrets`."""
    masked: list[str] = []
    for i, arg in enumerate(argv):
        option, sep, value = arg.partition("=")
        if i > 0 and argv[i - 1] in DB_OPTIONS:
            masked.append(mask_url(arg))
        elif sep and option in DB_OPTIONS:
            masked.append(f"{option}={mask_url(value)}")
        else:
            masked.append(mask_secrets(arg))
    return " ".join(masked)


def mask_tree(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with :func:`mask_secrets` applied to every string."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {key: mask_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_tree(item) for item in value]
    return value


def one_line(text: str) -> str:
    """``text`` on one line (driver messages span several), masked."""
    return mask_secrets(" ".join(text.split()))
