"""not_learning judged against the run's own budget (the planned steps): a hopeless run flagged early, a slow
start left alone. Host numbers only (the reduced losses, the LR, validation accuracy)."""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Optional

import numpy as np

from trainlab.watch.advice import CODE, Advice
from trainlab.watch.events import Episode, Event
from trainlab.watch.figures import WARNING, cap, chance_limit, fmt, fraction
from trainlab.watch.settings import WatchSettings
from trainlab.watch.stats import theil_sen


class BudgetProgress:
    """not_learning judged against the run's own budget (the planned number of steps), so a hopeless run is
    flagged early while a slow start is left alone.

    - train loss: once the LR has been at its peak for a while (a warm-up or OneCycle ramp is not judged), the
      loss has not dropped from its start and its current slope, over the whole planned budget, would lower it
      by less than `progress_min_rate` of its start;
    - validation: accuracy near chance once `progress_val_frac` of the planned steps are done.
    Off when the planned steps are unknown (a Watcher in someone else's loop that was not told)."""

    START_STEPS = 20

    def __init__(self, s: WatchSettings, planned_steps: Optional[int], num_classes: Optional[int],
                 advice: Advice = CODE) -> None:
        self.s = s
        self.advice = advice
        self.planned = int(planned_steps) if planned_steps else None
        self.num_classes = num_classes
        self.start: list[float] = []
        self.recent: deque[tuple[int, float]] = deque(maxlen=4096)
        self.lrs: deque[tuple[int, float]] = deque(maxlen=4096)
        self.lr_max = 0.0
        self.loss_episode = Episode()
        self.val_episode = Episode()
        self.streak = 0  # consecutive reductions that found the run hopeless
        self.best_val = 0.0

    def _window(self) -> int:
        return max(20, int(self.s.progress_window_frac * (self.planned or 0)))

    def _lr_at(self, step: int) -> Optional[float]:
        older = [lr for s, lr in self.lrs if s <= step]
        return older[-1] if older else None

    def feed(self, steps_losses: list[tuple[int, float]], lr: Optional[float], step: int, epoch: int) -> Optional[Event]:
        for st, loss in steps_losses:
            if math.isfinite(loss):
                if len(self.start) < self.START_STEPS:
                    self.start.append(loss)
                self.recent.append((st, loss))
        if lr is not None:
            self.lrs.append((step, float(lr)))
            self.lr_max = max(self.lr_max, float(lr))
        if not self.planned or lr is None or len(self.start) < self.START_STEPS:
            return None
        s, w = self.s, self._window()
        if step < max(s.progress_min_steps, s.progress_min_frac * self.planned) or step >= self.planned:
            return None
        lr_before = self._lr_at(step - w)
        at_peak = lr >= 0.9 * self.lr_max and lr_before is not None and lr <= 1.1 * lr_before and lr_before >= 0.5 * self.lr_max
        window = [(st, v) for st, v in self.recent if st > step - 3 * w]
        if not at_peak or len(window) < 10:
            self.streak = 0
            return None
        start = float(np.median(self.start))
        now = float(np.median([v for st, v in window if st > step - w]))
        x = np.array([p[0] for p in window], dtype=np.float64)
        y = np.array([p[1] for p in window], dtype=np.float64)
        slope, _ = theil_sen(x, y)
        # the slope's uncertainty (least squares standard error): a noisy small-batch run gets the benefit of
        # the doubt, a run stuck at chance (little noise, no drift) does not
        residual = y - (np.median(y - slope * x) + slope * x)
        spread = float(np.sqrt(np.sum((x - x.mean()) ** 2))) or 1.0
        stderr = float(np.std(residual)) / spread
        hopeful = slope - s.progress_slope_sigmas * stderr  # the steepest descent the data still allows
        remaining = self.planned - step
        projected = now + min(slope, 0.0) * remaining
        rate = -hopeful * self.planned / max(start, 1e-12)  # the share of the start loss the whole budget removes
        flat = now >= (1.0 - s.progress_min_drop) * start
        self.streak = self.streak + 1 if flat and rate < s.progress_min_rate else 0
        # judged at every reduction: it must hold at consecutive ones, so one lucky window of noise does not speak
        if not self.loss_episode.update(WARNING if self.streak >= s.progress_confirm else 0):
            return None
        chance = f" (chance level ln({self.num_classes}) = {math.log(self.num_classes):.3f})" if self.num_classes else ""
        a = self.advice
        return Event(
            "not_learning", "warning", step, epoch,
            f"the loss has not moved after {step} of the {self.planned} planned steps ({step / self.planned:.0%}): "
            f"median {fmt(now)} over the last {w} steps vs {fmt(start)} at the start{chance}, while the LR has been "
            f"at its peak {fmt(lr)} for {w}+ steps; at the current slope ({slope:+.2e} ± {stderr:.1e}/step: at best "
            f"{rate:.1%} of the start over the whole budget) it would end near {fmt(projected)} after the remaining {remaining} steps. Try: "
            f"{a('raise_lr')}; {a('labels')}; {a('frozen')}; {a('weight_decay')}.",
            {"rule": "budget_loss", "planned_steps": self.planned, "start_median": start, "recent_median": now,
             "slope_per_step": slope, "slope_stderr": stderr, "budget_rate": rate, "projected_end": projected, "lr": lr, "window": w},
        )

    def epoch_val(self, step: int, epoch: int, val_acc: Optional[float]) -> Optional[Event]:
        if not self.planned or val_acc is None or not self.num_classes or self.num_classes < 2:
            return None
        self.best_val = max(self.best_val, fraction(val_acc))
        if step < self.s.progress_val_frac * self.planned and step < self.planned:
            return None  # judged from progress_val_frac of the plan, and at the run's end whatever its length
        acc = self.best_val  # the best so far: one noisy validation dipping back to chance is not a verdict
        chance, limit = chance_limit(self.num_classes, self.s.chance_margin)
        if not self.val_episode.update(WARNING if acc <= limit else 0):
            return None
        return Event(
            "not_learning", "warning", step, epoch,
            f"validation accuracy is at chance: the best so far is {acc:.1%}, chance is {chance:.1%} "
            f"({self.num_classes} classes), after {step} of the "
            f"{self.planned} planned steps ({step / self.planned:.0%}). {cap(self.advice('labels'))}; check the LR "
            f"({self.advice('range_test')}) and {self.advice('normalise')}.",
            {"rule": "budget_val", "planned_steps": self.planned, "val_acc": acc, "chance": chance, "limit": limit},
        )

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "recent": list(self.recent), "lrs": list(self.lrs), "lr_max": self.lr_max,
                "episodes": [self.loss_episode.active_level, self.val_episode.active_level], "streak": self.streak, "best_val": self.best_val}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.start = list(d["start"])
        self.recent.extend(tuple(p) for p in d["recent"])
        self.lrs.extend(tuple(p) for p in d["lrs"])
        self.lr_max = d["lr_max"]
        self.loss_episode.active_level, self.val_episode.active_level = d["episodes"]
        self.streak = d.get("streak", 0)
        self.best_val = d.get("best_val", 0.0)
