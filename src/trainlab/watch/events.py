"""What the watch reports: events, and the debounce that keeps one problem to one event."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "critical")


@dataclass
class Event:
    kind: str  # memory_leak | data_bottleneck | loss_spike | nonfinite | not_learning | divergence | straggler
    severity: str  # info | warning | critical
    step: int
    epoch: int
    message: str  # what was seen, the figures, what to try
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(**{k: d[k] for k in ("kind", "severity", "step", "epoch", "message", "data", "time") if k in d})


class Episode:
    """Fires on the rising edge of a condition only; re-arms once the condition has cleared.

    `level` lets a warning episode escalate once to critical without re-firing at the same level.
    """

    def __init__(self) -> None:
        self.active_level = 0  # 0: quiet, else the highest severity index fired in this episode

    def update(self, level: int) -> bool:
        if level <= 0:
            self.active_level = 0
            return False
        if level > self.active_level:
            self.active_level = level
            return True
        return False
