"""The conditions of a catalog query: each names an index and what to match in it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Eq:
    """The field index's value equals ``value`` (a keyword index: holds ``value``)."""
    index: str
    value: Any


@dataclass(frozen=True)
class InRange:
    """The field index's value lies between ``min`` and ``max``, both included; ``None``
    leaves that side open."""
    index: str
    min: Any = None
    max: Any = None


@dataclass(frozen=True)
class AnyOf:
    """The field index's value is one of ``values`` (a keyword index: holds one of them)."""
    index: str
    values: Sequence[Any]


@dataclass(frozen=True)
class AllOf:
    """The keyword index holds every one of ``values``."""
    index: str
    values: Sequence[Any]


@dataclass(frozen=True)
class Contains:
    """The text index matches ``text``: words (all of them), ``AND``, ``OR``, ``NOT``,
    ``"a phrase"`` and ``prefix*``. Results are ranked by relevance (Okapi BM25)."""
    index: str
    text: str


Condition = Eq | InRange | AnyOf | AllOf | Contains
