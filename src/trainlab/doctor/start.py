"""The doctor at the start of every run: a callback the entry points install (`StartChecks`).

A fresh run gets the configuration smells at step 0 (free: no data read, no step), or with
`train.preflight=true` the cheap checks (no training, a copy of the model, random state restored, so the run
is unchanged), each logged as an event. A resumed run gets neither: they were said when it started.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Optional

import torch

from trainlab.config import micro_batch_cap
from trainlab.doctor.verdict import Verdict, timed
from trainlab.train.optim import check_schedule


class StartChecks:
    """`on_train_start`: the smells (or the preflight checks) of a fresh run, as events, on rank 0."""

    def on_train_start(self, run: Any) -> None:
        if run.resumed or not run.ctx.is_main:
            return
        if run.cfg.train.preflight:
            for v in preflight_verdicts(run.cfg, run.data, run.raw_model, run.num_classes):
                run.log_event("preflight", **v.event())
            return
        smell = start_smells(run.cfg, run.data, run.raw_model, run.num_classes)
        if smell is not None:
            run.log_event("config_smell", "warning", f"config: {smell.summary} -> {smell.fix}", **smell.figures)


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

    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        batches = len(data.train)
        if cfg.train.max_steps_per_epoch:
            batches = min(batches, micro_batch_cap(cfg))
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
