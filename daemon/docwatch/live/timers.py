"""The daemon's periodic jobs as named deadlines (pure: the caller passes the clock)."""

from __future__ import annotations


class Timers:
    """Named deadlines, each re-armed by its own period after it fires."""

    def __init__(self, now: float, periods: dict[str, float]) -> None:
        self.periods = dict(periods)
        self.deadlines = {name: now + period for name, period in periods.items()}

    def next_deadline(self) -> float:
        return min(self.deadlines.values())

    def due(self, now: float) -> list[str]:
        """The names whose deadline passed, re-armed from ``now``."""
        fired = [name for name, at in self.deadlines.items() if at <= now]
        for name in fired:
            self.deadlines[name] = now + self.periods[name]
        return fired

    def rearm(self, name: str, now: float) -> None:
        self.deadlines[name] = now + self.periods[name]
