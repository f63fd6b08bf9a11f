"""Thresholds and switches of the watch; the `watch:` section of a trainlab config.

Every threshold is relative (a share, a ratio, a multiple of a robust spread) except the floors that keep
noise quiet (minimum megabytes, minimum milliseconds). Windows are counted in optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class WatchSettings:
    enabled: bool = True
    print_every: int = 50  # console line + one device reduction every N steps
    show_gpu: bool = True
    warn_on_leak: bool = True  # memory_leak
    warn_on_bottleneck: bool = True  # data_bottleneck
    warn_on_variance: bool = True  # loss_spike
    on_nonfinite: str = "warn"  # warn | skip | stop  (acted on by the engine)
    sample_interval_s: float = 0.5  # system sampler thread period (CPU %, RSS, RAM %, GPU util)
    # data_bottleneck: median share of step time blocked on the loader, over the last window of steps
    bottleneck_warning: float = 0.10
    bottleneck_critical: float = 0.30
    bottleneck_cpu_warning: float = 0.30  # on a CPU device (loader and model share the cores); the zoo's heavy
    # policy with 2 workers waits 10-11% of a step on 2 busy cores, the main-process heavy policy 53%
    bottleneck_window: int = 50
    bottleneck_min_samples: int = 10  # steps in the window before the first judgement (checked every 10 steps)
    bottleneck_min_wait_ms: float = 1.0  # below this per-step wait there is nothing to gain
    bottleneck_min_lost_s: float = 1.0  # nor below this much waiting over an epoch (a tiny model on a tiny epoch)
    bottleneck_clear_frac: float = 0.5  # a reported bottleneck clears once the share falls below this of its bar
    # loss_spike: a step loss above max(median + k*MAD, ratio*median, the window's max + its distance to median)
    spike_mads: float = 10.0
    spike_min_ratio: float = 2.0
    spike_window: int = 50
    spike_min_level: float = 1.0  # ... and at least this share of the untrained loss (ln(classes), or the first losses)
    # memory_leak: Theil-Sen slope of (step, MB) samples, consistent (Kendall tau) and large enough, over the
    # recent window or the whole run since warm-up, rising at most samples. The zoos: real leaks rise in
    # 92-100% of sample pairs (tau 0.92-1.0); healthy runs' memory moves in one or two jumps of up to ~35 MB (a
    # first validation, allocator growth) with tau up to 0.8, and sits still between them (steadiness ~0)
    leak_min_mb_per_epoch: float = 50.0  # unused since the trend rule below covers every run length; kept so
    leak_min_projected_frac: float = 0.05  # configs that set these still load
    leak_min_total_mb: float = 32.0  # growth over the observed span
    leak_min_kb_per_step: float = 1.0  # a list of floats (32 B a step) grows forever too, harmlessly
    leak_sample_every: int = 10  # steps between memory samples (and between the host checks: leak, loader)
    leak_window: int = 64  # samples kept for the recent trend (the run's trend keeps 32..64, thinned)
    leak_min_samples: int = 8
    leak_min_tau: float = 0.8  # Kendall tau of memory vs step: 1 = rises at every sample
    leak_min_steadiness: float = 0.5  # the median rise between samples over the slope's: a leak ~1, jumps ~0
    leak_warmup_steps: int = 20  # allocator / cache warm-up ignored
    # not_learning: no drop from the run's first losses over a long window, or val acc near chance
    not_learning_epochs: int = 3
    not_learning_window: int = 1000
    not_learning_min_drop: float = 0.03
    chance_margin: float = 0.05  # val acc <= chance + margin * (1 - chance) reads as chance
    # not_learning at an epoch's end: val acc at chance and the train loss (the epoch's last half's median)
    # within chance_flat_drop of ln(classes), there and at the previous epoch's end (epochs of chance_min_steps+)
    chance_flat_drop: float = 0.02
    chance_val_drop: float = 0.01  # ... and the val loss (when given) within this of ln(classes)
    chance_min_steps: int = 20
    label_move_min: float = 0.1  # weights moved this share of their norm: the LR is not what holds the loss up
    # not_learning against the run's budget (when the run tells the watch its planned steps): judged once
    # progress_min_frac of the steps are done and the LR has been at its peak for a window of
    # progress_window_frac of the planned steps; the loss must have dropped progress_min_drop from its start, or
    # fall at a rate that, over the whole planned run, would lower it by progress_min_rate of its start (the zoo:
    # stuck faults 0.3-0.7%, slow healthy starts 3-8%). Val accuracy at chance after progress_val_frac.
    progress_min_frac: float = 0.08
    progress_min_steps: int = 30
    progress_window_frac: float = 0.05
    progress_min_drop: float = 0.05
    progress_min_rate: float = 0.015
    progress_slope_sigmas: float = 1.0  # the slope is taken at its most hopeful: minus this many standard errors
    progress_confirm: int = 2  # consecutive reductions that must agree
    progress_val_frac: float = 0.6
    # weights_static (model_probe.py): the trainable weights' relative movement, projected over the planned LR
    # budget, below weights_min_move while the loss is still >= weights_chance_frac of ln(classes); judged from
    # max(weights_min_steps, weights_min_frac of the plan) to weights_max_frac of it (the zoo: an LR 1000x too low
    # projects ~1e-3; healthy recipes, slow starts included, 0.3 and more)
    weights_min_move: float = 0.02
    weights_min_norm_ratio: float = 0.01  # weights_shrinking: the norm projected to end below this share of its start
    weights_chance_frac: float = 0.9
    weights_min_steps: int = 20  # watch steps, and optimizer updates when the watch has the optimizer
    weights_min_frac: float = 0.04
    weights_max_frac: float = 0.5
    # input_scale: the first batch after normalisation, per channel
    input_max_abs_mean: float = 5.0
    input_max_std: float = 10.0
    input_min_std: float = 0.02  # every channel below: the inputs are (nearly) constant
    # divergence: loss of the window's last quarter this many times its first quarter, rising consistently
    divergence_window: int = 200
    divergence_ratio: float = 1.5
    # ... or the median of the last divergence_level_steps losses at this many times the untrained loss
    divergence_level_ratio: float = 3.0
    divergence_level_steps: int = 10
    # straggler (DDP): a rank's mean step time this many times the median rank's
    straggler_ratio: float = 1.25


def coerce_settings(values: Any) -> WatchSettings:
    """A WatchSettings from a WatchSettings, a dict, or a config section (OmegaConf DictConfig)."""
    if isinstance(values, WatchSettings):
        return WatchSettings(**{f.name: getattr(values, f.name) for f in fields(WatchSettings)})
    known = {f.name for f in fields(WatchSettings)}
    get = values.get if hasattr(values, "get") else lambda k, d=None: getattr(values, k, d)
    return WatchSettings(**{k: get(k) for k in known if get(k, None) is not None})
