"""Thresholds and switches of the watch; the `watch:` section of a trainlab config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WatchSettings:
    enabled: bool = True
    print_every: int = 50
    show_gpu: bool = True
    warn_on_leak: bool = True
    warn_on_bottleneck: bool = True
    warn_on_variance: bool = True
    on_nonfinite: str = "warn"  # warn | skip | stop
    sample_interval_s: float = 0.5  # system sampler thread period
    bottleneck_warning: float = 0.10  # data-wait share of step time (window median)
    bottleneck_critical: float = 0.30
    spike_mads: float = 10.0  # loss above median + k * MAD of the recent window
    leak_min_mb_per_epoch: float = 50.0
    not_learning_epochs: int = 3
    divergence_window: int = 200
