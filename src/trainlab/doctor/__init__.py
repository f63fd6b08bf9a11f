"""`trainlab doctor CONFIG [key=value ...]`: a pre-flight of the exact run a config describes.

Checks (each a Verdict: ok / warning / problem, its figures, the fix, its cost in seconds):
config_smells, input_stats, label_histogram, sample_grid (samples.png), initial_loss, overfit_batch,
parameters, activations (+ batchnorm_mode), lr_range (lr_range.png), label_signal, throughput. The report is written as
doctor.json + doctor.txt in --out (default runs/doctor-<name>-<stamp>). Exit 0 when nothing is a problem, 1
otherwise, 2 for bad input. `train.preflight=true` runs the cheap ones before a run's first step
(`preflight_verdicts`), logged as events of kind `preflight`.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch

from trainlab.doctor.verdict import Verdict, exit_code, timed, write_report


def diagnose(cfg: Any, out_dir: Optional[Path] = None, config_name: str = "(defaults)",
             printer=print) -> tuple[list[Verdict], Path]:
    """Run every check on the run `cfg` describes; writes the report in out_dir. Returns (verdicts, out_dir)."""
    from trainlab.doctor import checks, inputs, smells
    from trainlab.doctor.patient import examine
    from trainlab.doctor.probe import probe
    from trainlab.errors import UsageError
    from trainlab.paths import check_output_dir

    started = time.perf_counter()
    if out_dir is not None:  # a bad --out fails in one line before any check runs
        check_output_dir(out_dir, "--out", UsageError)
    patient = examine(cfg)  # bad config or data: raises before anything is written
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


def start_smells(cfg: Any, data: Any, model: torch.nn.Module, num_classes: int) -> Optional[Verdict]:
    """The configuration smells of a run about to start, for every `trainlab train` (free: no data read, no
    step). None when nothing smells. The schedule's own warnings are left out: the run logs those itself."""
    from trainlab.doctor import smells
    from trainlab.doctor.patient import Patient

    device = next(model.parameters()).device
    patient = Patient(cfg, device, data, num_classes, int(data.train.batch_size), 1, 1, [])
    verdict = smells.config_smells(patient, model)
    return None if verdict.status == "ok" else verdict


def preflight_verdicts(cfg: Any, data: Any, model: torch.nn.Module, num_classes: int) -> list[Verdict]:
    """The cheap checks, on a run that is about to start: no training, a copy of the model, RNG untouched."""
    from trainlab.doctor import checks, inputs, smells
    from trainlab.doctor.patient import Patient
    from trainlab.doctor.probe import probe
    from trainlab.optim import check_schedule

    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        batches = len(data.train)
        if cfg.train.max_steps_per_epoch:
            batches = min(batches, int(cfg.train.max_steps_per_epoch))
        spe = -(-batches // int(cfg.train.grad_accum))
        device = next(model.parameters()).device
        patient = Patient(cfg, device, data, num_classes, int(data.train.batch_size), spe,
                          spe * int(cfg.train.epochs), check_schedule(cfg.sched, int(cfg.train.epochs), spe))
        verdicts = timed(smells.config_smells, patient, model)
        verdicts += timed(inputs.input_stats, patient)
        verdicts += timed(inputs.label_histogram, patient)
        t0 = time.perf_counter()
        images, labels = next(patient.train_batches(1))
        first = probe(copy.deepcopy(model), images[:64], labels[:64], patient.loss)
        found = [checks.initial_loss(patient, first), checks.parameters(first, None),
                 *[v for v in checks.layers(first, first) if v.check == "batchnorm_mode"]]
        for v in found:
            v.cost_s = round((time.perf_counter() - t0) / len(found), 3)
        return verdicts + found
    finally:
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def cmd_doctor(args: argparse.Namespace) -> int:
    from trainlab.config import load_config, split_config_and_overrides

    config_path, overrides = split_config_and_overrides(args.items)
    cfg = load_config(config_path, overrides)
    verdicts, _ = diagnose(cfg, Path(args.out) if args.out else None, config_path or "(defaults)")
    return exit_code(verdicts)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="pre-flight checks of a run: trainlab doctor [CONFIG] [key=value ...]",
        description="Examine the run a config describes before spending hours on it: initial loss, overfitting one "
        "batch, an LR range test, whether the train labels are predictable from their images, parameters and "
        "activations, input statistics, labels, a sample grid, config "
        "smells, throughput and ETA. Writes doctor.json, doctor.txt, samples.png and lr_range.png. Exit 0 when "
        "nothing is a problem, 1 otherwise.",
    )
    p.add_argument("items", nargs="*", metavar="CONFIG|key=value", help="a YAML config, then overrides")
    p.add_argument("--out", help="report directory (default runs/doctor-<name>-<timestamp>)")
    p.set_defaults(func=cmd_doctor)
