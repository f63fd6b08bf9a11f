"""The detectors. Each sees host-side numbers only (reduced losses, memory samples, step clocks) and returns
events; none touches the device. Each kind fires once per episode (see `Episode`)."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from typing import Any, Optional

import numpy as np

from trainlab.watch.advice import CODE, Advice
from trainlab.watch.events import Episode, Event
from trainlab.watch.settings import WatchSettings
from trainlab.watch.stats import MAD_TO_SIGMA, median_mad, theil_sen
from trainlab.watch.stragglers import straggler_events  # the old import path

__all__ = ["BottleneckDetector", "BudgetProgress", "LeakDetector", "LossDetectors", "straggler_events"]

WARNING, CRITICAL = 1, 2
_SEVERITY = {WARNING: "warning", CRITICAL: "critical"}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _fraction(acc: float) -> float:
    """A validation accuracy given as a percentage or a fraction, as a fraction."""
    return float(acc) / 100.0 if float(acc) > 1.0 else float(acc)


def _chance(num_classes: int, margin: float) -> tuple[float, float]:
    """(chance, the accuracy at or below which a run reads as at chance)."""
    chance = 1.0 / num_classes
    return chance, chance + margin * (1.0 - chance)


class LossDetectors:
    """loss_spike, nonfinite, divergence and not_learning, fed with the per-step losses of each reduction."""

    REFERENCE_STEPS = 20  # the run's first finite losses: what "has the loss gone down?" compares against
    UNTRAINED_STEPS = 5  # the first of them: the untrained model's loss, before the updates have done much

    def __init__(self, s: WatchSettings, advice: Advice = CODE, num_classes: Optional[int] = None) -> None:
        self.s = s
        self.advice = advice
        self.num_classes = num_classes if num_classes and num_classes >= 2 else None  # also set by epoch_end
        self._untrained: tuple[Any, Optional[float]] = (None, None)  # (its inputs, the level): a cache
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

    def untrained_level(self) -> Optional[float]:
        """What the loss of a model that has learnt nothing is: the larger of ln(classes) (uniform outputs over
        the labels) and the run's own first losses (a head wider than the labels, or a bad init, starts
        higher: ln(1000) = 6.9 for a 1000-way head on 10 classes, 3x ln(10))."""
        key = (self.num_classes, min(len(self.reference), self.UNTRAINED_STEPS))
        if self._untrained[0] != key:
            self._untrained = (key, self._untrained_level())
        return self._untrained[1]

    def _untrained_level(self) -> Optional[float]:
        first = self.reference[: self.UNTRAINED_STEPS]
        levels = [math.log(self.num_classes)] if self.num_classes else []
        if len(first) == self.UNTRAINED_STEPS:
            levels.append(float(np.median(first)))
        return max(levels) if levels else None

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
        level = self.untrained_level() or 0.0
        threshold = max(med + s.spike_mads * MAD_TO_SIGMA * mad, s.spike_min_ratio * med, top + (top - med),
                        s.spike_min_level * level)
        return threshold, med, mad, len(window)

    def _spike(self, step: int, epoch: int, loss: float, threshold: float, med: float, mad: float,
               window: int) -> Event:
        return Event(
            "loss_spike", "warning", step, epoch,
            f"loss spiked to {_fmt(loss)} at step {step}, {loss / max(med, 1e-12):.1f}x the median "
            f"{_fmt(med)} of the {window} steps before (threshold {_fmt(threshold)}). One bad batch or an LR "
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
                else f"{_fmt(level)}, the run's first losses")
        return (f"loss is {now / level:.1f}x an untrained model's: median {_fmt(now)} over the last {n} steps vs {what}.",
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
        return (f"loss is trending up: median {_fmt(last_med)} over the last {q} steps vs {_fmt(first_med)} "
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
            f"the loss has not gone down in {self.finite_seen} steps: median {_fmt(now)} over the last {n} steps "
            f"vs {_fmt(ref)} at the start (needs a drop of {s.not_learning_min_drop:.0%}). "
            f"{_cap(self.advice('labels'))}; check that the LR is neither tiny nor huge, and "
            f"{self.advice('head')}.",
            {"steps": self.finite_seen, "start_median": ref, "recent_median": now},
        )

    def epoch_at_chance(self, step: int, epoch: int, val_acc: Optional[float], epoch_losses: list[float],
                        weights_moved: Optional[float] = None, final: bool = False) -> Optional[Event]:
        """not_learning from two epochs in a row that both end with validation accuracy at chance and a training
        loss still at the chance level ln(classes) (within chance_flat_drop, over each epoch's last half): the
        loss did not move, so nothing was learnt that carries to new samples. One epoch is not enough: heavy
        augmentation or a slow start under warm-up sits at chance for a whole epoch, then moves (the standalone
        zoo's heavy augmentation: 9.5% after epoch 1, 18% after 2; the CLI zoo's base recipe: 13% after epochs
        1 and 2, but its loss fell 6% in epoch 2).
        `final`: the run ends here (its last epoch), so one epoch at chance is all there will be.
        `weights_moved` (the trainable weights' relative distance from their start, when the watch has the
        model) tells a label problem (they move) from an LR far too low (they do not)."""
        s, classes = self.s, self.num_classes
        if val_acc is None or not classes:
            return None
        chance, limit = _chance(classes, s.chance_margin)
        acc = _fraction(val_acc)
        tail = epoch_losses[len(epoch_losses) // 2:]
        loss_now, level = (float(np.median(tail)) if tail else float("nan")), math.log(classes)
        flat = len(epoch_losses) >= s.chance_min_steps and loss_now >= (1.0 - s.chance_flat_drop) * level
        previous, self.chance_history = (self.chance_history[-1] if self.chance_history else None), \
            [*self.chance_history[-7:], (acc <= limit, flat)]
        at_chance = acc <= limit and flat and (previous == (True, True) or final)
        if not self.chance_episode.update(WARNING if at_chance else 0):
            return None
        if weights_moved is not None and weights_moved >= s.label_move_min:
            cause = (f"The weights moved {weights_moved:.2f} of their norm meanwhile, so the LR is not too low: what "
                     f"is learnt does not carry to new samples. {_cap(self.advice('labels'))}.")
        else:
            cause = (f"Either the LR is far off (too low: nothing moves; too high: the outputs die and the loss "
                     f"sits at ln(classes)), or {self.advice('labels')}, or the parameters do not train ("
                     f"{self.advice('frozen')}).")
        when = "at the end of the run" if final and previous != (True, True) else "for two epochs in a row"
        return Event(
            "not_learning", "warning", step, epoch,
            f"validation accuracy is at chance {when} ({acc:.1%} now, chance {chance:.1%} for {classes} classes) "
            f"and the training loss did not leave the chance level ln({classes}) = {level:.3f} (median "
            f"{_fmt(loss_now)} over this epoch's last {len(tail)} steps). {cause}",
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
            f"parameters do not train ({self.advice('frozen')}).",
            {"rule": "epoch_chance", "final": True},
        )

    def epoch_val(self, step: int, epoch: int, val_acc: Optional[float], num_classes: Optional[int]) -> Optional[Event]:
        """not_learning from validation: accuracy near chance after `not_learning_epochs` epochs."""
        if val_acc is None or not num_classes or num_classes < 2:
            return None
        self.val_history.append(_fraction(val_acc))
        k = self.s.not_learning_epochs
        if len(self.val_history) < k:
            return None
        chance, limit = _chance(num_classes, self.s.chance_margin)
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


class LeakDetector:
    """memory_leak for one memory (host RSS or device allocated): a steady, large trend over steps.

    Two series of samples: the recent window (leak_window samples at the sampling rate: a fast leak shows in
    a few hundred steps) and the whole run since its warm-up, thinned to half whenever it holds twice that
    (a slow leak shows over the run). A new process (a resume) starts both again, with a new warm-up: its
    memory is not comparable with the old process's and it ramps up while it rebuilds."""

    LABELS = {"host": "host memory (process RSS)", "gpu": "device memory (allocated)"}

    def __init__(self, s: WatchSettings, source: str) -> None:
        self.s = s
        self.source = source
        self.samples: deque[tuple[int, float]] = deque(maxlen=s.leak_window)
        self.run_samples: list[tuple[int, float]] = []
        self.run_stride = 1  # one sample in `run_stride` goes into run_samples
        self.seen = 0
        self.warm_until = s.leak_warmup_steps
        self.episode = Episode()

    def restart(self, step: int) -> None:
        """This process's memory from `step` on is a new series (after a resume), warm-up included."""
        self.samples.clear()
        self.run_samples, self.run_stride, self.seen = [], 1, 0
        self.warm_until = step + self.s.leak_warmup_steps

    def add(self, step: int, mb: float) -> None:
        if step < self.warm_until:
            return
        self.samples.append((step, mb))
        if self.seen % self.run_stride == 0:
            self.run_samples.append((step, mb))
            if len(self.run_samples) >= self.s.leak_window:  # thinned: 32..64 samples over the whole run
                self.run_samples = self.run_samples[::2]
                self.run_stride *= 2
        self.seen += 1

    def _trend(self, samples: Any) -> Optional[tuple[float, float, float, float, float]]:
        """(slope MB/step, Kendall tau, span in steps, growth MB over the span, steadiness), or None with too few
        samples. Steadiness: the median rise between consecutive samples over the rise the slope predicts. A
        leak rises at nearly every sample (about 1); a healthy process's memory, which only ever grows, rises in
        a few jumps (a first validation, an allocator arena) and sits still in between (about 0), which Kendall
        tau alone reads as consistent: every pair across a jump rises."""
        if len(samples) < self.s.leak_min_samples:
            return None
        values = [p[1] for p in samples]
        if max(values) - min(values) < 0.5 * self.s.leak_min_total_mb:  # the usual case, for a few microseconds
            return 0.0, 0.0, float(samples[-1][0] - samples[0][0]), 0.0, 0.0
        x = np.array([p[0] for p in samples], dtype=np.float64)
        y = np.array(values, dtype=np.float64)
        slope, tau = theil_sen(x, y)
        span = float(x[-1] - x[0])
        dx, dy = np.diff(x), np.diff(y)
        keep = dx > 0
        expected = slope * dx[keep]
        steadiness = float(np.median(dy[keep] / expected)) if slope > 0 and keep.any() else 0.0
        return slope, tau, span, slope * span, steadiness

    def check(self, step: int, epoch: int, steps_per_epoch: int, steps_per_s: float,
              free_mb: Callable[[], Optional[float]], remaining_steps: Optional[int] = None) -> Optional[Event]:
        """A leak is a consistent trend (Kendall tau >= leak_min_tau) that grew leak_min_total_mb or more over its
        span, in the recent window or over the run. `free_mb` is asked only when the event fires (it is slow
        to read). With `remaining_steps` (the run told the watch its budget) the event says whether memory runs
        out before the run's end (critical) or after it."""
        s = self.s
        # the run's series is the recent window itself until it has been thinned or outgrown the window
        longer = self.run_stride > 1 or len(self.run_samples) > len(self.samples)
        trends = [t for t in (self._trend(self.samples), self._trend(self.run_samples) if longer else None)
                  if t is not None]
        rising = [t for t in trends if t[1] >= s.leak_min_tau and t[3] >= s.leak_min_total_mb
                  and t[4] >= s.leak_min_steadiness and t[0] * 1024 >= s.leak_min_kb_per_step]
        if not trends:
            return None
        if not self.episode.update(WARNING if rising else 0):
            return None
        slope, tau, span, growth, steadiness = max(rising, key=lambda t: t[3])
        per_epoch = slope * max(steps_per_epoch, 1)
        runway = ""
        free = free_mb()
        now_mb = float(self.samples[-1][1])
        data: dict[str, Any] = {"source": self.source, "mb_per_step": slope, "mb_per_epoch": per_epoch,
                                "growth_mb": growth, "span_steps": span, "tau": tau, "steadiness": steadiness,
                                "now_mb": now_mb}
        if free is not None and slope > 0:
            steps_left = free / slope
            epochs_left = steps_left / max(steps_per_epoch, 1)
            data.update(free_mb=free, epochs_until_full=epochs_left)
            runway = f"; the {free:,.0f} MB still free run out in {epochs_left:.1f} epochs"
            if steps_per_s > 0:
                minutes = steps_left / steps_per_s / 60.0
                data["minutes_until_full"] = minutes
                runway += f" (~{minutes:,.0f} min)"
            if remaining_steps is not None:
                data.update(steps_until_full=steps_left, remaining_steps=remaining_steps)
                runway += (f", before the run's remaining {remaining_steps:,} steps end" if steps_left < remaining_steps
                           else f", after the run's remaining {remaining_steps:,} steps (+{slope * remaining_steps:,.0f} MB by then)")
        severity = "critical" if data.get("steps_until_full", float("inf")) < (remaining_steps or 0) else "warning"
        return Event(
            "memory_leak", severity, step, epoch,
            f"{self.LABELS[self.source]} grows steadily: {per_epoch:+,.1f} MB per epoch ({slope * 1024:,.0f} KB/step, "
            f"{growth:+,.0f} MB over {span:.0f} steps, rising in {(tau + 1) / 2:.0%} of sample pairs){runway}. "
            f"Something keeps tensors alive across steps: store loss.item() not loss, .detach() outputs you keep, "
            f"and clear lists or caches that grow every step.",
            data,
        )

    def state_dict(self) -> dict[str, Any]:
        # the samples stay with this process: a resumed process starts its own series (restart())
        return {"episode": self.episode.active_level}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.episode.active_level = d["episode"]


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
        tips = [a("workers", suggested=max(2, 2 * workers), now=workers) if workers is not None else a("workers_unknown")]
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
            f"median {_fmt(now)} over the last {w} steps vs {_fmt(start)} at the start{chance}, while the LR has been "
            f"at its peak {_fmt(lr)} for {w}+ steps; at the current slope ({slope:+.2e} ± {stderr:.1e}/step: at best "
            f"{rate:.1%} of the start over the whole budget) it would end near {_fmt(projected)} after the remaining {remaining} steps. Try: "
            f"{a('raise_lr')}; {a('labels')}; {a('frozen')}; {a('weight_decay')}.",
            {"rule": "budget_loss", "planned_steps": self.planned, "start_median": start, "recent_median": now,
             "slope_per_step": slope, "slope_stderr": stderr, "budget_rate": rate, "projected_end": projected, "lr": lr, "window": w},
        )

    def epoch_val(self, step: int, epoch: int, val_acc: Optional[float]) -> Optional[Event]:
        if not self.planned or val_acc is None or not self.num_classes or self.num_classes < 2:
            return None
        self.best_val = max(self.best_val, _fraction(val_acc))
        if step < self.s.progress_val_frac * self.planned and step < self.planned:
            return None  # judged from progress_val_frac of the plan, and at the run's end whatever its length
        acc = self.best_val  # the best so far: one noisy validation dipping back to chance is not a verdict
        chance, limit = _chance(self.num_classes, self.s.chance_margin)
        if not self.val_episode.update(WARNING if acc <= limit else 0):
            return None
        return Event(
            "not_learning", "warning", step, epoch,
            f"validation accuracy is at chance: the best so far is {acc:.1%}, chance is {chance:.1%} "
            f"({self.num_classes} classes), after {step} of the "
            f"{self.planned} planned steps ({step / self.planned:.0%}). {_cap(self.advice('labels'))}; check the LR "
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
