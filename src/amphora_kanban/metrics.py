"""Flow metrics computed from the cards' history events.

Times are seconds since the epoch (UTC); days are UTC dates in ISO form. For a card:

- *lead time*: from its ``created`` event to the first event that puts it in a
  ``complete`` state;
- *cycle time*: from the first event that puts it in a ``working`` state to that same
  completion;
- *throughput*: cards completed per day (each card counted on its first completion);
- *cumulative flow*: for each day, how many cards are in each state at the end of that
  day (archived cards leave the count when archived).
"""
from __future__ import annotations

import datetime
from typing import Any, Iterable

from amphora_kanban.board import Board
from amphora_kanban.card import Card

__all__ = ["lead_time", "cycle_time", "throughput", "cumulative_flow", "flow_metrics"]

_DAY = datetime.timedelta(days=1)
_UTC = datetime.timezone.utc


def _completed_at(card: Card) -> float | None:
    for event in card.history:
        if event["complete"] and event["event"] in ("created", "moved"):
            return event["at"]
    return None


def lead_time(card: Card) -> float | None:
    """Seconds from creation to first completion; None while not complete."""
    done = _completed_at(card)
    created = next((e["at"] for e in card.history if e["event"] == "created"), None)
    if done is None or created is None:
        return None
    return done - created


def cycle_time(card: Card) -> float | None:
    """Seconds from first working to first completion; None when either is missing."""
    done = _completed_at(card)
    started = next((e["at"] for e in card.history if e["working"]), None)
    if done is None or started is None or started > done:
        return None
    return done - started


def _day(at: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(at, _UTC).date()


def throughput(cards: Iterable[Card]) -> dict[str, int]:
    """``{day: cards completed that day}`` for days with at least one completion."""
    counts: dict[str, int] = {}
    for card in cards:
        done = _completed_at(card)
        if done is not None:
            day = _day(done).isoformat()
            counts[day] = counts.get(day, 0) + 1
    return dict(sorted(counts.items()))


def cumulative_flow(cards: Iterable[Card], first: datetime.date, last: datetime.date
                    ) -> dict[str, dict[str, int]]:
    """``{day: {state id: cards in it at the end of the day}}`` from ``first`` to
    ``last`` inclusive (states holding no card that day are left out)."""
    cards = list(cards)
    flow: dict[str, dict[str, int]] = {}
    day = first
    while day <= last:
        end = datetime.datetime.combine(day + _DAY, datetime.time(), _UTC).timestamp()
        counts: dict[str, int] = {}
        for card in cards:
            latest = None
            for event in card.history:
                if event["at"] < end:
                    latest = event
            if latest is not None and latest["event"] != "archived":
                counts[latest["state"]] = counts.get(latest["state"], 0) + 1
        flow[day.isoformat()] = dict(sorted(counts.items()))
        day += _DAY
    return flow


def flow_metrics(board: Board, first: datetime.date, last: datetime.date
                 ) -> dict[str, Any]:
    """All of the above for a board's cards, live and archived:
    ``{"lead_times": {id: s}, "cycle_times": {id: s}, "throughput": {...},
    "cfd": {...}}`` (cards without a lead or cycle time are left out)."""
    cards = board.cards() + [c for f in board.archived() for c in board.bagged(f.id)]
    lead = {c.id: t for c in cards if (t := lead_time(c)) is not None}
    cycle = {c.id: t for c in cards if (t := cycle_time(c)) is not None}
    return {"lead_times": lead, "cycle_times": cycle, "throughput": throughput(cards),
            "cfd": cumulative_flow(cards, first, last)}
