"""What the watch hands back: the record of each logging step, the report of each epoch, the run's summary,
and the epoch's tally (steps, images, losses) that the epoch report is made from."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from trainlab.watch.events import Event

TIME_KEYS = ("data_time_s", "compute_time_s", "other_time_s", "epoch_time_s")


@dataclass
class EpochTally:
    """One epoch's counts; saved with a checkpoint taken mid-epoch, so the resumed epoch reports the whole."""

    epoch: int = 0
    steps: int = 0
    images: int = 0
    losses: list[float] = field(default_factory=list)
    nonfinite: int = 0
    first_event: int = 0  # index in the run's events of this epoch's first

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> EpochTally:
        return cls(d["epoch"], d["steps"], d["images"], list(d["losses"]), d["nonfinite"], d["first_event"])


def loss_trend(losses: list[float]) -> tuple[Optional[float], str]:
    """Last quarter's mean over the first quarter's: below 0.97 decreasing, above 1.03 increasing."""
    if len(losses) < 4:
        return None, "n/a"
    q = len(losses) // 4
    first, last = sum(losses[:q]) / q, sum(losses[-q:]) / q
    if first <= 0:
        return None, "n/a"
    ratio = last / first
    return ratio, "decreasing" if ratio < 0.97 else "increasing" if ratio > 1.03 else "stable"


def step_record(step: int, epoch: int, finite: list[float], lr: Optional[float], step_time: float,
                interval: Any, watching: bool, grad_norm: Optional[float], system: dict[str, Any],
                rss_mb: float, probe_figures: dict[str, float], gpu: dict[str, Any]) -> dict[str, Any]:
    """The line of steps.jsonl (and the console) at a logging step."""
    wall = max(interval.wall_s, 1e-12)
    record: dict[str, Any] = {
        "step": step,
        "epoch": epoch,
        "loss": sum(finite) / len(finite) if finite else None,
        "lr": lr,
        "step_time_s": step_time,
        "data_wait_frac": interval.wait_s / wall if watching else None,
        "images_per_s": interval.images / wall if interval.images else None,
        "grad_norm": grad_norm,
        "cpu_pct": system.get("cpu_pct"),
        "rss_mb": rss_mb,
        "ram_pct": system.get("ram_pct"),
        **probe_figures,
    }
    if gpu:
        record.update(gpu, gpu_util_pct=system.get("gpu_util_pct"))
    record["time"] = time.time()
    return record


def epoch_report(tally: EpochTally, step: int, times: dict[str, Any], memory: dict[str, Any],
                 gpu: dict[str, Any], warnings: dict[str, int], val_loss: Optional[float],
                 val_acc: Optional[float], extra: dict[str, Any]) -> dict[str, Any]:
    losses = tally.losses
    trend_ratio, trend = loss_trend(losses)
    epoch_time = times["epoch_time_s"]
    report: dict[str, Any] = {
        "epoch": tally.epoch,
        "steps": tally.steps,
        "step": step,
        "images": tally.images,
        "loss_mean": sum(losses) / len(losses) if losses else None,
        "loss_trend": trend_ratio,
        "loss_trend_label": trend,
        "nonfinite_steps": tally.nonfinite,
        **{k: v for k, v in times.items()},
        "images_per_s": tally.images / epoch_time if epoch_time > 0 else 0.0,
        **memory,
        "val_loss": val_loss,
        "val_acc": val_acc,
        **gpu,
    }
    report["peak_mem_mb"] = report.get("gpu_peak_mb", memory["peak_rss_mb"])
    report["events"] = warnings  # this epoch's warnings by kind, whoever raised them (the run's own included)
    report.update(extra)
    return report


def run_summary(events: list[Event], steps: int, epochs: int, nonfinite_steps: int, peak_rss_mb: float,
                totals: Counter, overhead_s: float, last_loss: Optional[float],
                gpu_peak_mb: Optional[float]) -> dict[str, Any]:
    """The run's health figures: event counts, memory peaks, where the time went, the monitor's cost."""
    epoch_s = totals["epoch_time_s"]
    out: dict[str, Any] = {
        "steps": steps,
        "epochs": epochs,
        "events": dict(Counter(e.kind for e in events)),
        "events_by_severity": dict(Counter(e.severity for e in events)),
        "nonfinite_steps": nonfinite_steps,
        "peak_rss_mb": peak_rss_mb,
        **{k: totals[k] for k in TIME_KEYS},
        "data_wait_frac": totals["data_time_s"] / epoch_s if epoch_s else None,
        "images_per_s": totals["images"] / epoch_s if epoch_s else None,
        "overhead_s": overhead_s,
        "overhead_frac": overhead_s / epoch_s if epoch_s else None,
        "last_loss": last_loss,
    }
    if gpu_peak_mb is not None:
        out["gpu_peak_mb"] = gpu_peak_mb
    return out
