"""The detectors. Each sees host-side numbers only (reduced losses, memory samples, step clocks) and returns
events; none touches the device. Each kind fires once per episode (see `Episode`)."""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any, Optional

import numpy as np

from trainlab.watch.advice import CODE, Advice
from trainlab.watch.budget import BudgetProgress  # the old import paths of these three
from trainlab.watch.events import Episode, Event
from trainlab.watch.figures import CRITICAL, WARNING, cap, chance_limit, fmt, fraction
from trainlab.watch.leaks import LeakDetector
from trainlab.watch.sampler import usable_cpus
from trainlab.watch.settings import WatchSettings
from trainlab.watch.stats import MAD_TO_SIGMA, median_mad
from trainlab.watch.stragglers import straggler_events

__all__ = ["BottleneckDetector", "BudgetProgress", "LeakDetector", "LossDetectors", "straggler_events"]

_SEVERITY = {WARNING: "warning", CRITICAL: "critical"}


class LossDetectors:
    """loss_spike, nonfinite, divergence and not_learning, fed with the per-step losses of each reduction."""

    REFERENCE_STEPS = 20  # the run's first finite losses: what "has the loss gone down?" compares against
    UNTRAINED_STEPS = 5  # the first of them: the untrained model's loss, before the updates have done much

    def __init__(self, s: WatchSettings, advice: Advice = CODE, num_classes: Optional[int] = None) -> None:
        self.s = s
        self.advice = advice
        self.num_classes = num_classes if num_classes and num_classes >= 2 else None  # also set by epoch_end
        self._untrained: tuple[Any, list[float]] = (None, [])  # (its inputs, the levels): a cache
        self.recent: deque[float] = deque(maxlen=max(s.spike_window, s.divergence_window, 8))
        self.reference: list[float] = []
        self.finite_seen = 0
        self.spike_cooldown_until = -1
        self.finite_run = 0  # consecutive finite losses; re-arms the nonfinite episode
        self.nonfinite_armed = True
        self.divergence = Episode()
        self.not_learning = Episode()
        self.val_not_learning = Episode()
        self.chance_episode = Episode()
        self.chance_history: list[tuple[bool, bool]] = []  # per epoch: (val at chance, train loss flat at chance)
        self.val_history: list[float] = []

    def untrained_level(self, high: bool = True) -> Optional[float]:
        """What the loss of a model that has learnt nothing is: ln(classes) (uniform outputs over the labels)
        and the run's own first losses, which start higher with a head wider than the labels (ln(1000) = 6.9
        for a 1000-way head on 10 classes) or a BatchNorm net's confident init (2.5x ln(10) in the zoo's CNN).
        `high`: the larger of the two (what divergence must exceed), else the smaller (what a spike must reach:
        a BatchNorm init's first losses would hide a mislabelled batch at 2.6x ln(10))."""
        key = (self.num_classes, min(len(self.reference), self.UNTRAINED_STEPS))
        if self._untrained[0] != key:
            self._untrained = (key, self._untrained_levels())
        levels = self._untrained[1]
        return (max(levels) if high else min(levels)) if levels else None

    def _untrained_levels(self) -> list[float]:
        first = self.reference[: self.UNTRAINED_STEPS]
        levels = [math.log(self.num_classes)] if self.num_classes else []
        if len(first) == self.UNTRAINED_STEPS:
            levels.append(float(np.median(first)))
        return levels

    def feed(self, steps_losses: list[tuple[int, float]], epoch: int) -> list[Event]:
        events: list[Event] = []
        # the spike threshold comes from the steps before this interval: computed once per reduction
        threshold = self._spike_threshold() if self.s.warn_on_variance else None
        for step, loss in steps_losses:
            if not math.isfinite(loss):
                self.finite_run = 0
                if self.nonfinite_armed:
                    self.nonfinite_armed = False
                    events.append(self._nonfinite(step, epoch, loss))
                continue
            self.finite_run += 1
            if self.finite_run >= self.s.spike_window:
                self.nonfinite_armed = True
            if threshold is not None and loss > threshold[0] and step >= self.spike_cooldown_until:
                self.spike_cooldown_until = step + self.s.spike_window
                events.append(self._spike(step, epoch, loss, *threshold))
            self.recent.append(loss)
            self.finite_seen += 1
            if len(self.reference) < self.REFERENCE_STEPS:
                self.reference.append(loss)
        if steps_losses:
            last_step = steps_losses[-1][0]
            events += [e for e in (self._divergence(last_step, epoch), self._stalled(last_step, epoch)) if e]
        return events

    def _nonfinite(self, step: int, epoch: int, loss: float) -> Event:
        a = self.advice
        return Event(
            "nonfinite", "critical", step, epoch,
            f"loss is {loss} at step {step}: the weights are probably corrupted from here on. Check that step's "
            f"inputs for NaN/Inf, {a.join('lower_lr', 'clip', 'precision')}; {a('stop_at_nan')}.",
            {"loss": str(loss), "first_bad_step": step},
        )

    def _spike_threshold(self) -> Optional[tuple[float, float, float, int]]:
        """(threshold, median, MAD, window length) over the recent finite losses, or None if too few."""
        s = self.s
        if len(self.recent) < max(8, s.spike_window // 2):
            return None
        window = np.fromiter(list(self.recent)[-s.spike_window:], dtype=np.float64)
        med, mad = median_mad(window)
        top = float(window.max())
        # Four floors, so the ordinary tails of small batches never fire: k robust sigmas, a ratio of the
        # median, twice the distance of anything seen in the window, and a share of the untrained loss. Late in a
        # run at batch 8 the median may be 0.001 and one hard batch 0.9: a thousand times the median, but not a
        # step that undid the training.
        level = self.untrained_level(high=False) or 0.0
        threshold = max(med + s.spike_mads * MAD_TO_SIGMA * mad, s.spike_min_ratio * med, top + (top - med),
                        s.spike_min_level * level)
        return threshold, med, mad, len(window)

    def _spike(self, step: int, epoch: int, loss: float, threshold: float, med: float, mad: float,
               window: int) -> Event:
        return Event(
            "loss_spike", "warning", step, epoch,
            f"loss spiked to {fmt(loss)} at step {step}, {loss / max(med, 1e-12):.1f}x the median "
            f"{fmt(med)} of the {window} steps before (threshold {fmt(threshold)}). One bad batch or an LR "
            f"jump: check that step's data (and labels), {self.advice.join('lower_lr', 'warmup', 'clip')}.",
            {"loss": loss, "median": med, "mad": mad, "threshold": threshold, "window": window},
        )

    def _divergence(self, step: int, epoch: int) -> Optional[Event]:
        """Two ways up, one episode: a consistent rise over divergence_window steps, or a loss that has
        settled at divergence_level_ratio times the untrained loss (it exploded early and stays there: no
        trend is left to see, whatever the run's length)."""
        w = self.s.divergence_window
        found = self._exploded() or (self._rising() if len(self.recent) >= w else None)
        if not self.divergence.update(WARNING if found else 0):
            return None
        message, data = found
        return Event("divergence", "warning", step, epoch,
                     f"{message} The LR is likely too high: {self.advice.join('lower_lr_much', 'warmup', 'clip')}.",
                     data)

    def _exploded(self) -> Optional[tuple[str, dict[str, Any]]]:
        s, n = self.s, self.s.divergence_level_steps
        level = self.untrained_level()
        if level is None or level <= 0 or len(self.recent) < n:
            return None
        now = float(np.median(list(self.recent)[-n:]))
        if now < s.divergence_level_ratio * level:
            return None
        chance = math.log(self.num_classes) if self.num_classes else None
        what = (f"ln({self.num_classes}) = {level:.3f}, the loss of uniform outputs" if chance == level
                else f"{fmt(level)}, the run's first losses")
        return (f"loss is {now / level:.1f}x an untrained model's: median {fmt(now)} over the last {n} steps vs {what}.",
                {"rule": "level", "recent_median": now, "untrained": level, "ratio": now / level, "window": n})

    def _rising(self) -> Optional[tuple[str, dict[str, Any]]]:
        w = self.s.divergence_window
        window = np.fromiter(list(self.recent)[-w:], dtype=np.float64)
        q = max(2, w // 4)
        first, last = window[:q], window[-q:]
        first_med, last_med = float(np.median(first)), float(np.median(last))
        # consistency: the share of (early, late) pairs where the late loss is higher
        higher = float(np.mean(last[None, :] > first[:, None]))
        if not (last_med > self.s.divergence_ratio * first_med and higher >= 0.9):
            return None
        ratio = last_med / max(first_med, 1e-12)
        return (f"loss is trending up: median {fmt(last_med)} over the last {q} steps vs {fmt(first_med)} "
                f"{w} steps ago ({ratio:.1f}x; later loss higher in {higher:.0%} of pairs).",
                {"window": w, "first_median": first_med, "last_median": last_med, "ratio": ratio})

    def _stalled(self, step: int, epoch: int) -> Optional[Event]:
        s = self.s
        if self.finite_seen < s.not_learning_window or not self.reference:
            self.not_learning.update(0)
            return None
        ref = float(np.median(self.reference))
        n = max(10, s.not_learning_window // 10)
        now = float(np.median(list(self.recent)[-n:]))
        stalled = now >= ref * (1.0 - s.not_learning_min_drop)
        if not self.not_learning.update(WARNING if stalled else 0):
            return None
        return Event(
            "not_learning", "warning", step, epoch,
            f"the loss has not gone down in {self.finite_seen} steps: median {fmt(now)} over the last {n} steps "
            f"vs {fmt(ref)} at the start (needs a drop of {s.not_learning_min_drop:.0%}). "
            f"{cap(self.advice('labels'))}; check that the LR is neither tiny nor huge, and "
            f"{self.advice('head')}.",
            {"steps": self.finite_seen, "start_median": ref, "recent_median": now},
        )

    def epoch_at_chance(self, step: int, epoch: int, val_acc: Optional[float], epoch_losses: list[float],
                        weights_moved: Optional[float] = None, final: bool = False,
                        val_loss: Optional[float] = None) -> Optional[Event]:
        """not_learning from two epochs in a row that both end with validation accuracy at chance and a training
        loss still at the chance level ln(classes) (within chance_flat_drop, over each epoch's last half): the
        loss did not move, so nothing was learnt that carries to new samples. One epoch is not enough: heavy
        augmentation or a slow start under warm-up sits at chance for a whole epoch, then moves (the standalone
        zoo's heavy augmentation: 9.5% after epoch 1, 18% after 2; the CLI zoo's base recipe: 13% after epochs
        1 and 2, but its loss fell 6% in epoch 2). The validation loss, when given, must sit at ln(classes) too
        (within chance_val_drop): a hard but healthy run's falls below it before its accuracy rises (the CLI
        zoo's heavy policy: 14.2% after epoch 2, at chance, but its val loss 2% under ln(10)); labels that do
        not match the images keep it there (0.996-1.003 ln(classes) in both zoos).
        `final`: the run ends here (its last epoch), so one epoch at chance is all there will be.
        `weights_moved` (the trainable weights' relative distance from their start, when the watch has the
        model) tells a label problem (they move) from an LR far too low (they do not)."""
        s, classes = self.s, self.num_classes
        if val_acc is None or not classes:
            return None
        chance, limit = chance_limit(classes, s.chance_margin)
        acc = fraction(val_acc)
        tail = epoch_losses[len(epoch_losses) // 2:]
        loss_now, level = (float(np.median(tail)) if tail else float("nan")), math.log(classes)
        flat = len(epoch_losses) >= s.chance_min_steps and loss_now >= (1.0 - s.chance_flat_drop) * level \
            and (val_loss is None or not math.isfinite(val_loss) or val_loss >= (1.0 - s.chance_val_drop) * level)
        previous, self.chance_history = (self.chance_history[-1] if self.chance_history else None), \
            [*self.chance_history[-7:], (acc <= limit, flat)]
        at_chance = acc <= limit and flat and (previous == (True, True) or final)
        if not self.chance_episode.update(WARNING if at_chance else 0):
            return None
        if weights_moved is not None and weights_moved >= s.label_move_min:
            cause = (f"The weights moved {weights_moved:.2f} of their norm meanwhile, so the LR is not too low: what "
                     f"is learnt does not carry to new samples. {cap(self.advice('labels'))}")
        else:
            cause = (f"Either the LR is far off (too low: nothing moves; too high: the outputs die and the loss "
                     f"sits at ln(classes)), or {self.advice('labels')}, or the parameters do not train ("
                     f"{self.advice('frozen')})")
        if final and previous != (True, True):  # one epoch: it may also just be too short to leave chance
            cause += f"; or {step} steps are too few for this model to leave chance (a slow start)"
        cause += "."
        when = "at the end of the run" if final and previous != (True, True) else "for two epochs in a row"
        return Event(
            "not_learning", "warning", step, epoch,
            f"validation accuracy is at chance {when} ({acc:.1%} now, chance {chance:.1%} for {classes} classes) "
            f"and the training loss did not leave the chance level ln({classes}) = {level:.3f} (median "
            f"{fmt(loss_now)} over this epoch's last {len(tail)} steps). {cause}",
            {"rule": "epoch_chance", "val_acc": acc, "chance": chance, "limit": limit, "train_loss": loss_now,
             "chance_loss": level, "weights_moved": weights_moved, "final": final},
        )

    def run_end(self, step: int, epoch: int) -> Optional[Event]:
        """A run that ends (close()) after an epoch at chance with a flat loss, not said yet: said now. For a loop
        that did not tell the watch its length, its end is the first moment a one-epoch run can be judged."""
        if not self.chance_history or self.chance_history[-1] != (True, True) or self.chance_episode.active_level:
            return None
        self.chance_episode.update(WARNING)
        classes = self.num_classes or 0
        return Event(
            "not_learning", "warning", step, epoch,
            f"the run ended at chance: validation accuracy at chance ({100 / max(classes, 1):.1f}% for {classes} "
            f"classes) after its last epoch, and the training loss still at ln({classes}) = "
            f"{math.log(max(classes, 2)):.3f}. Either the LR is far off, or {self.advice('labels')}, or the "
            f"parameters do not train ({self.advice('frozen')}); or {step} steps are too few for this model to "
            f"leave chance (a slow start).",
            {"rule": "epoch_chance", "final": True},
        )

    def epoch_val(self, step: int, epoch: int, val_acc: Optional[float], num_classes: Optional[int]) -> Optional[Event]:
        """not_learning from validation: accuracy near chance after `not_learning_epochs` epochs."""
        if val_acc is None or not num_classes or num_classes < 2:
            return None
        self.val_history.append(fraction(val_acc))
        k = self.s.not_learning_epochs
        if len(self.val_history) < k:
            return None
        chance, limit = chance_limit(num_classes, self.s.chance_margin)
        best = max(self.val_history[-k:])
        if not self.val_not_learning.update(WARNING if best <= limit else 0):
            return None
        return Event(
            "not_learning", "warning", step, epoch,
            f"validation accuracy is at chance: best {best:.1%} over the last {k} epochs, chance is {chance:.1%} "
            f"({num_classes} classes). The model is not learning: {self.advice('labels')}; check the LR and "
            f"{self.advice('normalise')}.",
            {"best_val_acc": best, "chance": chance, "limit": limit, "epochs": k},
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "recent": list(self.recent), "reference": self.reference, "finite_seen": self.finite_seen,
            "spike_cooldown_until": self.spike_cooldown_until, "finite_run": self.finite_run,
            "nonfinite_armed": self.nonfinite_armed, "val_history": self.val_history, "num_classes": self.num_classes,
            "chance_history": self.chance_history,
            "episodes": [self.divergence.active_level, self.not_learning.active_level,
                         self.val_not_learning.active_level, self.chance_episode.active_level],
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.recent.extend(d["recent"])
        self.reference = list(d["reference"])
        self.finite_seen = d["finite_seen"]
        self.spike_cooldown_until = d["spike_cooldown_until"]
        self.finite_run = d["finite_run"]
        self.nonfinite_armed = d["nonfinite_armed"]
        self.val_history = list(d["val_history"])
        self.num_classes = d.get("num_classes") or self.num_classes
        self.chance_history = [tuple(x) for x in d.get("chance_history", [])]
        episodes = (self.divergence, self.not_learning, self.val_not_learning, self.chance_episode)
        for episode, level in zip(episodes, d["episodes"]):
            episode.active_level = level


class BottleneckDetector:
    """data_bottleneck: the median share of step time spent blocked on the loader, over a window of steps."""

    def __init__(self, s: WatchSettings, on_cpu: bool = False, advice: Advice = CODE) -> None:
        self.s = s
        self.advice = advice
        # On a CPU device the loader and the model share the same cores: a small wait is the price of that
        # sharing, not an idle accelerator, so only a wait that dominates the step is worth a warning.
        self.on_cpu = on_cpu
        self.warning_share = max(s.bottleneck_warning, s.bottleneck_cpu_warning) if on_cpu else s.bottleneck_warning
        self.waits: deque[float] = deque(maxlen=s.bottleneck_window)
        self.walls: deque[float] = deque(maxlen=s.bottleneck_window)
        self.episode = Episode()

    def add(self, wait_s: float, wall_s: float) -> None:
        self.waits.append(wait_s)
        self.walls.append(wall_s)

    def check(self, step: int, epoch: int, loader_info: dict[str, Any], steps_per_epoch: int = 0) -> Optional[Event]:
        """`steps_per_epoch`: the loader's length when known (else the steps of an epoch so far): a wait that
        costs less than bottleneck_min_lost_s over a whole epoch is not worth anyone's time."""
        s = self.s
        if len(self.waits) < max(4, s.bottleneck_min_samples):
            return None
        # plain Python on 50 floats: numpy's per-call overhead is larger than the work, every 10 steps
        share = statistics.median(w / max(t, 1e-9) for w, t in zip(self.waits, self.walls))
        wait_ms = statistics.median(self.waits) * 1000.0
        lost_s = wait_ms / 1000.0 * max(steps_per_epoch, len(self.waits))
        level = 0
        if wait_ms >= s.bottleneck_min_wait_ms and lost_s >= s.bottleneck_min_lost_s:
            critical = max(s.bottleneck_critical, self.warning_share)
            level = CRITICAL if share > critical else WARNING if share > self.warning_share else 0
            # hysteresis: a wait hovering around the bar is one episode, not one event per crossing
            if level == 0 and self.episode.active_level and share > s.bottleneck_clear_frac * self.warning_share:
                level = self.episode.active_level
        if not self.episode.update(level):
            return None
        workers = loader_info.get("num_workers")
        a = self.advice
        cpus = usable_cpus()
        if workers is None:
            tips = [a("workers_unknown")]
        elif workers >= cpus:  # one worker per usable CPU already: more would share them (torch warns too)
            tips = [a("workers_full", now=workers, cpus=f"{cpus} CPU{'s' if cpus > 1 else ''}")]
        else:
            tips = [a("workers", suggested=min(max(2, 2 * workers), cpus), now=workers)]
        if loader_info.get("pin_memory") is False and not self.on_cpu:
            tips.append(a("pin_memory"))
        tips.append(a("in_memory"))
        return Event(
            "data_bottleneck", _SEVERITY[level], step, epoch,
            f"the loop waits for data {share:.0%} of each step (median over the last {len(self.waits)} steps: "
            f"{wait_ms:.1f} ms waiting of {statistics.median(self.walls) * 1000:.1f} ms per step); "
            + ("the model waits for the loader meanwhile. " if self.on_cpu else "the device idles meanwhile. ")
            + "Try: " + "; ".join(tips) + ".",
            {"data_wait_frac": share, "wait_ms": wait_ms, "step_ms": statistics.median(self.walls) * 1000,
             "window": len(self.waits), **{k: v for k, v in loader_info.items() if v is not None}},
        )
