"""`trainlab doctor CONFIG [key=value ...]`: a pre-flight of the exact run a config describes.

Checks (each a Verdict: ok / warning / problem, its figures, the fix, its cost in seconds):
config_smells, input_stats, label_histogram, sample_grid (samples.png), initial_loss, overfit_batch,
parameters, activations (+ batchnorm_mode), lr_range (lr_range.png), label_signal, throughput. The report is written as
doctor.json + doctor.txt in --out (default runs/doctor-<name>-<stamp>). Exit 0 when nothing is a problem, 1
otherwise, 2 for bad input. `train.preflight=true` runs the cheap ones before a run's first step
(`doctor.start`), logged as events of kind `preflight`.
"""

from __future__ import annotations

import math
import sys
import time
import types
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Union

import torch

from trainlab.doctor.verdict import Verdict, timed, write_report


class _CallableDoctor(types.ModuleType):
    """`trainlab.doctor(...)` is this package called: importing the package rebinds the name `doctor` on
    `trainlab` to it, so the function users call and the package are one object."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[Verdict]:
        return examine_run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableDoctor


def diagnose(cfg: Any, out_dir: Optional[Path] = None, config_name: str = "(defaults)",
             printer=print, user: Any = None) -> tuple[list[Verdict], Path]:
    """Run every check on the run `cfg` describes; writes the report in out_dir. Returns (verdicts, out_dir)."""
    from trainlab.doctor import checks, inputs, smells
    from trainlab.doctor.patient import examine
    from trainlab.doctor.probe import probe
    from trainlab.errors import UsageError
    from trainlab.paths import check_output_dir

    started = time.perf_counter()
    if out_dir is not None:  # a bad --out fails in one line before any check runs
        check_output_dir(out_dir, "--out", UsageError)
    patient = examine(cfg, user)  # bad config or data: raises before anything is written
    name = cfg.run.name or f"{cfg.model.name}-{cfg.data.name}"
    if out_dir is None:
        out_dir = Path("runs") / f"doctor-{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    verdicts: list[Verdict] = []

    def add(found: list[Verdict]) -> None:
        for v in found:
            printer(v.line())
        verdicts.extend(found)

    model = patient.new_model()
    add(timed(smells.config_smells, patient, model))
    add(timed(inputs.input_stats, patient))
    add(timed(inputs.label_histogram, patient))
    add(timed(inputs.sample_grid, patient, out_dir))
    t0 = time.perf_counter()
    images, labels = next(patient.train_batches(1))
    first = probe(model, images[:64], labels[:64], patient.loss)
    probe_s = time.perf_counter() - t0
    add(timed(checks.initial_loss, patient, first))
    t0 = time.perf_counter()
    fitted, unchanged, trained, batch = checks.overfit_batch(patient)
    fitted.cost_s = round(time.perf_counter() - t0, 3)
    add([fitted])
    t0 = time.perf_counter()
    after = probe(trained, *batch, patient.loss, backward=False)
    found = [checks.parameters(first, unchanged), *checks.layers(first, after)]
    for v in found:  # their cost: the two instrumented passes (the overfit is counted once, above)
        v.cost_s = round((probe_s + time.perf_counter() - t0) / len(found), 3)
    add(found)
    add(timed(checks.lr_range, patient, out_dir))
    suggested = verdicts[-1].figures.get("suggested")
    suspects = tuple(dict.fromkeys(v.check for v in verdicts if v.status == "problem"))
    add(timed(checks.label_signal, patient, math.sqrt(suggested[0] * suggested[1]) if suggested else None, suspects))
    add(timed(checks.throughput, patient))
    header = {"config": config_name, "run": name, "device": str(patient.device), "torch": torch.__version__,
              "created": datetime.now().isoformat(timespec="seconds"), "wall_s": round(time.perf_counter() - started, 2),
              "planned_steps": patient.total_steps, "batch_size": patient.batch_size, "peak_lr": patient.peak_lr}
    printer("")
    printer(write_report(out_dir, header, verdicts).split("\n")[-1])
    return verdicts, out_dir


def examine_run(
    config: Any = None,
    *overrides: str,
    model: Any = None,
    train_data: Any = None,
    val_data: Any = None,
    loss_fn: Optional[Callable] = None,
    train_transform: Optional[Callable] = None,
    val_transform: Optional[Callable] = None,
    out: Optional[Union[str, Path]] = None,
    printer: Callable[[str], None] = print,
) -> list[Verdict]:
    """`trainlab.doctor(...)`: the verdicts on the run `trainlab.fit` would start with the same arguments (each a
    Verdict: check, status ok / warning / problem, what it saw, the fix, figures); the report goes to `out`."""
    from trainlab.config import config_with_objects
    from trainlab.user import UserParts

    objects = {"model.name": model, "data.name": train_data, "train.loss": loss_fn,
               "aug.train_transform": train_transform, "aug.val_transform": val_transform}  # fmt: skip
    cfg = config_with_objects(config, overrides, objects)
    given = UserParts(model=model, train_data=train_data, val_data=val_data, loss_fn=loss_fn,
                      train_transform=train_transform, val_transform=val_transform)  # fmt: skip
    verdicts, _ = diagnose(cfg, Path(out) if out else None, str(config) if config else "(python)", printer, user=given)
    return verdicts
