"""Checking and cleaning the text users type: titles, descriptions, reasons, emails.

Descriptions are HTML from a rich-text editor. They are cleaned with ``nh3`` (the
Ammonia sanitiser: an allow-list of tags and attributes, no scripts, no event handlers,
no ``javascript:`` links) when it is installed (the ``kanban`` extra); without it every
character is escaped, so markup shows as text and nothing ever runs.
"""
from __future__ import annotations

import html
import re

from amphora_kanban.errors import BadInput

__all__ = ["clean_html", "escape_html", "title", "optional_text", "points", "email"]

TITLE_MAX = 200
TEXT_MAX = 100_000
POINTS_MAX = 1000
# (a host without a dot is allowed: admin@localhost is the first administrator's default)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)*$")


def escape_html(text: str) -> str:
    """``text`` with every HTML special character escaped (the fallback sanitiser)."""
    return html.escape(text, quote=True)


def clean_html(text: str) -> str:
    """``text`` as HTML safe to show: sanitised by nh3, or escaped when it is missing."""
    try:
        import nh3
    except ImportError:  # the model needs amphora only; the app installs nh3
        return escape_html(text)
    return nh3.clean(text)


def title(value: object, field: str = "title") -> str:
    """A title: a non-empty string of at most TITLE_MAX characters, stripped."""
    if not isinstance(value, str):
        raise BadInput(field, f"must be a string, not {type(value).__name__}")
    value = value.strip()
    if not value:
        raise BadInput(field, "must not be empty")
    if len(value) > TITLE_MAX:
        raise BadInput(field, f"must be at most {TITLE_MAX} characters, not {len(value)}")
    return value


def optional_text(value: object, field: str) -> str | None:
    """None, or a string of at most TEXT_MAX characters (an empty one becomes None)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInput(field, f"must be a string or null, not {type(value).__name__}")
    if len(value) > TEXT_MAX:
        raise BadInput(field, f"must be at most {TEXT_MAX} characters, not {len(value)}")
    return value.strip() or None


def points(value: object, field: str = "size") -> int:
    """A size in points: an integer from 0 to POINTS_MAX (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(field, f"must be an integer, not {type(value).__name__}")
    if not 0 <= value <= POINTS_MAX:
        raise BadInput(field, f"must be between 0 and {POINTS_MAX}, not {value}")
    return value


def email(value: object, field: str = "email") -> str:
    """An email address, lower-cased; only its shape is checked."""
    if not isinstance(value, str) or not _EMAIL.match(value.strip()):
        raise BadInput(field, f"{value!r} is not an email address")
    return value.strip().lower()
