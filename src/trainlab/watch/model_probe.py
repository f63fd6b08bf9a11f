"""What the loss alone cannot tell early: the inputs' scale, BatchNorm's mode, and how far the weights move.

Three checks on the model and its inputs, each cheap and made rarely (detectors.py sees host numbers only;
these read the model):

- input_scale: the first batch's per-channel mean and std after normalisation (one device read, at the first
  batch of a fresh run). Raw 0..255 pixels (std ~60) or a wrong data.std show here; BatchNorm hides them from
  the loss, so a run with them learns, only worse.
- batchnorm_mode: BatchNorm layers in eval mode while the model trains (their running statistics frozen, no
  batch statistics). Host-only, at every reduction.
- weight movement: the relative distance of the trainable weights from where the run started, and their norm
  over the starting norm, on a fixed strided sample of at most SAMPLE elements (one gather and one read per
  reduction; 256 KB kept, saved with the watch's state). Projected over the run's planned LR budget (the sum of
  the LR over the planned steps), it tells an LR far too low (even at the most hopeful projection the weights
  move by a percent or two by the end: "not_learning", rule `weights_static`) from a slow start (the weights
  move, the loss has not followed yet), in the run's first tenth whatever the schedule; a warm-up or one-cycle
  ramp is not a reason to wait, because the budget counts the LR still to come. The norm, projected the same
  way (geometrically), tells weight decay that crushes the weights (rule `weights_shrinking`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn

from trainlab.watch.advice import CODE, Advice
from trainlab.watch.events import Episode, Event
from trainlab.watch.settings import WatchSettings

SAMPLE = 1 << 16  # weight elements followed: a relative distance over 65k strided elements is within ~1%
_BUDGET_POINTS = 2000  # LR evaluations to sum a long plan's LR budget (every k-th step, times k)
WARNING = 1


def _first_tensor(batch: Any) -> Optional[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        return next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return None


class PlannedLR:
    """The LR the schedule still plans from a step to the end of the plan. lr_at is evaluated once, at most
    _BUDGET_POINTS times (every k-th step standing for k steps), and summed from the end, so each judgement
    afterwards is a lookup rather than another pass over the plan."""

    def __init__(self, lr_at: Callable[[int], float], planned: int) -> None:
        self.every = max(1, planned // _BUDGET_POINTS)
        self.planned = planned
        samples = [lr_at(k) for k in range(0, planned, self.every)]
        self.suffix = list(itertools.accumulate(reversed(samples)))[::-1]  # suffix[i]: samples i.. summed

    def remaining(self, step: int) -> float:
        """The LR summed over steps step .. planned - 1."""
        first = -(-step // self.every)  # the first sample at or after `step`
        if first >= len(self.suffix):  # past the last sample: its LR for the few steps left
            return self.suffix[-1] * max(self.planned - step, 0) if self.suffix else 0.0
        counted = len(self.suffix) - first
        return self.suffix[first] * (self.planned - step) / counted  # each sample's share of the steps left


class ModelProbe:
    def __init__(self, s: WatchSettings, model: Optional[nn.Module], planned_steps: Optional[int],
                 num_classes: Optional[int], lr_at: Optional[Callable[[int], float]] = None,
                 advice: Advice = CODE) -> None:
        self.s = s
        self.advice = advice
        self.model = model
        self.planned = planned_steps
        self.num_classes = num_classes
        self.lr_at = lr_at
        self._planned_lr: Optional[PlannedLR] = None  # built at the first judgement (lr_at is evaluated once)
        self.updates = 0  # optimizer steps seen (counted by a step hook when the watch has the optimizer)
        self.counts_updates = False
        params = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()] if model else []
        self.params = params
        self.stride = max(1, sum(p.numel() for p in params) // SAMPLE)
        self.start: Optional[torch.Tensor] = None  # the sampled weights at the run's first batch (CPU float32)
        self.start_norm = 0.0
        self.lr_sum = 0.0  # the LR summed over the steps so far (watch steps)
        self.lr_max = 0.0
        self.inputs_checked = False
        self.bn_episode = Episode()
        self.weights_episode = Episode()
        self.last: dict[str, float] = {}  # the latest weight figures, for the step record

    # ---------------------------------------------------------------- first batch of a fresh run
    def first_batch(self, batch: Any, step: int, epoch: int) -> list[Event]:
        """At the first batch the watch sees: the input check (fresh runs only) and the weights' start."""
        events: list[Event] = []
        if step == 0 and self.start is None and self.params:
            self.start = self._sample()
            self.start_norm = float(self.start.norm())
        if not self.inputs_checked and step == 0:
            self.inputs_checked = True
            x = _first_tensor(batch)
            if x is not None and x.is_floating_point() and x.dim() == 4:
                e = self._input_scale(x, step, epoch)
                events += [e] if e else []
        return events

    def _sample(self) -> torch.Tensor:
        with torch.no_grad():
            parts = [p.detach().reshape(-1)[:: self.stride].float() for p in self.params]
            return torch.cat(parts).cpu()  # the one read

    def _input_scale(self, x: torch.Tensor, step: int, epoch: int) -> Optional[Event]:
        with torch.no_grad():
            x = x.detach().float()
            mean = x.mean(dim=(0, 2, 3))
            std = x.std(dim=(0, 2, 3)) if x[:, 0].numel() > 1 else torch.zeros_like(mean)
            means, stds = torch.stack([mean, std]).tolist()
        s = self.s
        bad_mean = max(abs(m) for m in means) > s.input_max_abs_mean
        bad_std = any(v > s.input_max_std for v in stds) or all(v < s.input_min_std for v in stds)
        if not (bad_mean or bad_std):
            return None
        fmt = ", ".join(f"{m:.3g}/{v:.3g}" for m, v in zip(means, stds))
        raw = max(stds) > 20 or max(abs(m) for m in means) > 20
        hint = self.advice("input_hint_raw" if raw else "input_hint")
        return Event(
            "input_scale", "warning", step, epoch,
            f"the first batch's inputs after normalisation have per-channel mean/std {fmt} (expected about 0/1): "
            f"{hint}. {self.advice('input_stats')[:1].upper() + self.advice('input_stats')[1:]}, "
            f"for the same scale as the images the loop feeds; BatchNorm hides this from the loss, but "
            f"the first layer and the weight decay do not.",
            {"mean": means, "std": stds},
        )

    # ---------------------------------------------------------------- every step
    def count_update(self, *_: Any) -> None:
        """An optimizer step post-hook: momentum needs ~20 updates to reach its speed, and under gradient
        accumulation a watch step (a batch) is a fraction of one, so the movement is judged in updates."""
        self.updates += 1

    def step(self, lr: Optional[float]) -> None:
        if lr is not None:
            self.lr_sum += lr
            self.lr_max = max(self.lr_max, lr)

    # ---------------------------------------------------------------- every reduction
    def check(self, step: int, epoch: int, recent_losses: list[float]) -> list[Event]:
        events: list[Event] = []
        e = self._batchnorm_mode(step, epoch)
        events += [e] if e else []
        if self.start is not None and self.start_norm > 0:
            e = self._weights(step, epoch, recent_losses)
            events += [e] if e else []
        return events

    def _batchnorm_mode(self, step: int, epoch: int) -> Optional[Event]:
        if self.model is None or not self.model.training:
            return None
        frozen = [name for name, m in self.model.named_modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training and m.track_running_stats]
        if not self.bn_episode.update(WARNING if frozen else 0):
            return None
        names = ", ".join(frozen[:3]) + (f" and {len(frozen) - 3} more" if len(frozen) > 3 else "")
        return Event(
            "batchnorm_mode", "warning", step, epoch,
            f"{len(frozen)} BatchNorm layers run in eval mode while the model trains ({names}): they normalise "
            f"with frozen running statistics instead of the batch's, and those statistics never update. Something "
            f"calls .eval() on them after model.train() (a hook, a freeze helper); call model.train() before each "
            f"epoch and freeze BatchNorm only on purpose (FrozenBatchNorm2d for a pretrained backbone).",
            {"layers": len(frozen), "names": frozen[:10]},
        )

    def _weights(self, step: int, epoch: int, recent_losses: list[float]) -> Optional[Event]:
        now = self._sample()
        moved = float((now - self.start).norm()) / self.start_norm
        norm_ratio = float(now.norm()) / self.start_norm
        self.last = {"weight_change": moved, "weight_norm_ratio": norm_ratio}
        s, planned = self.s, self.planned
        if not planned or step >= planned or self.lr_sum <= 0 or not recent_losses:
            return None
        if step < max(s.weights_min_steps, s.weights_min_frac * planned) or step > s.weights_max_frac * planned:
            return None
        if self.counts_updates and self.updates < s.weights_min_steps:
            return None
        if self.lr_at is not None:
            if self._planned_lr is None:
                self._planned_lr = PlannedLR(self.lr_at, planned)
            budget = self.lr_sum + self._planned_lr.remaining(step)
        else:  # someone else's loop: assume the largest LR seen so far for the rest of the run
            budget = self.lr_sum + self.lr_max * (planned - step)
        scale = budget / self.lr_sum
        # the most hopeful projection: the distance grows linearly with the LR spent (a random walk grows slower)
        projected = moved * scale
        self.last["weight_change_projected"] = projected
        loss_now = sorted(recent_losses)[len(recent_losses) // 2]
        at_chance = self.num_classes is None or loss_now >= s.weights_chance_frac * math.log(self.num_classes)
        static = projected < s.weights_min_move and at_chance
        # the norm shrinks geometrically in the LR spent when weight decay dominates the gradient
        norm_end = math.exp(math.log(max(norm_ratio, 1e-30)) * scale) if norm_ratio < 1 else norm_ratio
        self.last["weight_norm_projected"] = norm_end
        shrinking = norm_end < s.weights_min_norm_ratio and at_chance
        if shrinking and not static:
            if not self.weights_episode.update(WARNING):
                return None
            return self._shrinking(step, epoch, norm_ratio, norm_end, scale, loss_now)
        if not self.weights_episode.update(WARNING if static else 0):
            return None
        chance = f" (chance level ln({self.num_classes}) = {math.log(self.num_classes):.3f})" if self.num_classes else ""
        return Event(
            "not_learning", "warning", step, epoch,
            f"the weights have barely moved: {moved:.2e} of their norm after {step} of the {planned} planned steps "
            f"({step / planned:.0%}); at this pace (the LR still planned is {scale:.1f}x the LR spent) they would "
            f"move {projected:.1e} of their norm by the end, while the loss is {loss_now:.4g}{chance}. The LR is far too "
            f"low for this optimizer (peak so far {self.lr_max:.3g}): {self.advice('raise_lr')}, or "
            f"{self.advice('frozen')}.",
            {"rule": "weights_static", "weight_change": moved, "projected_change": projected,
             "weight_norm_ratio": norm_ratio, "lr_budget_ratio": scale, "planned_steps": planned, "loss": loss_now},
        )

    def _shrinking(self, step: int, epoch: int, norm_ratio: float, norm_end: float, scale: float,
                   loss_now: float) -> Event:
        planned = self.planned or 0
        return Event(
            "not_learning", "warning", step, epoch,
            f"the weights are shrinking: their norm is {norm_ratio:.2f}x its start after {step} of the {planned} "
            f"planned steps ({step / planned:.0%}), and at this pace (the LR still planned is {scale:.1f}x the LR "
            f"spent) it would end near {norm_end:.1e}x, while the loss is {loss_now:.4g}, still at chance. Weight "
            f"decay is crushing the weights: {self.advice('weight_decay')}.",
            {"rule": "weights_shrinking", "weight_norm_ratio": norm_ratio, "projected_norm_ratio": norm_end,
             "lr_budget_ratio": scale, "planned_steps": planned, "loss": loss_now},
        )

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "start_norm": self.start_norm, "lr_sum": self.lr_sum, "lr_max": self.lr_max,
                "updates": self.updates,
                "inputs_checked": self.inputs_checked, "stride": self.stride,
                "episodes": [self.bn_episode.active_level, self.weights_episode.active_level]}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("stride") == self.stride and isinstance(d.get("start"), torch.Tensor):
            self.start, self.start_norm = d["start"], float(d["start_norm"])
        self.lr_sum, self.lr_max = float(d["lr_sum"]), float(d["lr_max"])
        self.updates = int(d.get("updates", 0))
        self.inputs_checked = bool(d["inputs_checked"])
        self.bn_episode.active_level, self.weights_episode.active_level = d["episodes"]
