"""The standalone watch zoo: hand-written PyTorch loops with the `Watcher` alone, faults planted for real.

No trainlab config, data or model: each recipe is a plain loop the way the seed-000 user writes one (the seed
monitor's arguments, `for x, y in w.watch(loader)`, `w.step(loss=loss)`, `w.epoch_end(val_loss=..., val_acc=...,
num_classes=...)`), over tensors built here (Gaussian clusters for MLPs, class templates in noise for small
CNNs), batch sizes 8 to 256, SGD and Adam, short and long runs. Faults are planted in the loop's code (a list
that keeps every batch, a Dataset that sleeps, a corrupted batch, an LR bug, NaN in the data, shuffled
labels); a resume and a fine-tune run as two processes, like a real restart. Each recipe runs in its own
process (one torch thread), so one recipe's memory never looks like another's leak.

    PYTHONPATH=src python bench/watch_loop_zoo.py [--only NAME ...] [--doc docs/watch-zoo.md] [--out runs/loop-zoo]
    PYTHONPATH=src python bench/watch_loop_zoo.py --recipe NAME [--phase 1|2] --json OUT   (one recipe; used by the above)

A fault is caught when one of the event kinds meant for it fires; every other warning is a false alarm (on a
healthy recipe, every warning is one). The table (fault, first step flagged / steps of the run, false alarms)
replaces the "standalone" section of docs/watch-zoo.md; the CLI zoo (bench/watch_zoo.py) keeps its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from trainlab import Watcher
from trainlab.watch.sampler import rss_mb

CAUGHT_BY_DETECTOR = ("memory_leak", "data_bottleneck", "loss_spike", "nonfinite", "not_learning", "divergence")


@dataclass
class Recipe:
    model: str = "mlp"  # mlp | cnn
    classes: int = 10
    n_train: int = 4096
    n_val: int = 1024
    signal: Optional[float] = None  # class separation (mlp: cluster scale, cnn: template amplitude over unit
    # noise); by default 0.35 (mlp) and 0.12 (cnn): healthy runs end at 60-80% val accuracy, not at zero loss
    batch: int = 64
    epochs: int = 4
    opt: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.05
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine | warmup_cosine | step | exp_bug
    plant: str = ""  # see train()
    expected: Optional[tuple[str, ...]] = None  # the event kinds that catch the fault; None: healthy
    label_smoothing: float = 0.0
    mixup: float = 0.0
    augment: bool = False
    accum: int = 1
    clip: float = 0.0
    workers: int = 0
    phases: int = 1  # 2: the run is two processes (resume or fine-tune)
    seed: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


SEED_MONITOR = dict(print_every=100, show_gpu=True, warn_on_leak=True, warn_on_bottleneck=True, warn_on_variance=True)

# name -> recipe. Faults first; then healthy recipes of other kinds (any warning there is a false alarm).
RECIPES: dict[str, Recipe] = {
    "leak ~300 KB/step, keeps every batch (cnn, b96, 2 ep)": Recipe(
        model="cnn", n_train=19200, batch=96, epochs=2, plant="keep_batches", expected=("memory_leak",),
        note="`seen.append(x)`: 295 KB a step, ~118 MB in 400 steps"),
    "leak ~65 KB/step over a long run (mlp, b256, 20 ep)": Recipe(
        n_train=16384, batch=256, epochs=20, opt="adam", lr=1e-3, plant="keep_batches", extra={"dim": 64, "hidden": 512},
        expected=("memory_leak",), note="`seen.append(x)`: 64 KB a step for 1,280 steps"),
    "slow Dataset, sleeps 1 ms a sample (num_workers=0)": Recipe(
        model="cnn", n_train=3200, batch=32, epochs=1, plant="slow_dataset", expected=("data_bottleneck",)),
    "slow per-sample transform in __getitem__ (mlp, b128)": Recipe(
        n_train=8192, batch=128, epochs=2, plant="slow_transform", expected=("data_bottleneck",)),
    "one corrupted batch (inputs x40) at 40% (mlp, b32)": Recipe(
        n_train=4096, batch=32, epochs=3, plant="corrupt_batch", expected=("loss_spike",)),
    "one mislabelled batch (all labels 0) at 40% (cnn, b32)": Recipe(
        model="cnn", n_train=6400, batch=32, epochs=3, plant="mislabel_batch", expected=("loss_spike",)),
    "LR bug: x100 for one step at 40% (mlp, b64)": Recipe(
        n_train=8192, batch=64, epochs=4, plant="lr_jump", expected=("loss_spike", "divergence", "nonfinite")),
    "NaN in one sample at 30% (mlp, b32)": Recipe(
        n_train=4096, batch=32, epochs=2, plant="nan_sample", expected=("nonfinite",)),
    "Adam at lr 3, stuck at chance (cnn, b64, 2 ep)": Recipe(
        model="cnn", n_train=6400, batch=64, epochs=2, opt="adam", lr=3.0,
        expected=("not_learning", "divergence", "nonfinite")),
    "hopeless LR 1e-5, short (mlp, b64, 2 ep)": Recipe(
        n_train=4096, batch=64, epochs=2, lr=1e-5, expected=("not_learning",)),
    "hopeless LR 1e-6, long (cnn, b32, 10 ep)": Recipe(
        model="cnn", n_train=3200, batch=32, epochs=10, lr=1e-6, expected=("not_learning",)),
    "divergence: ExponentialLR gamma 1.01 per step (mlp, b64)": Recipe(
        n_train=8192, batch=64, epochs=6, lr=0.01, schedule="exp_bug",
        expected=("divergence", "nonfinite", "loss_spike", "not_learning")),  # it ends at chance: all true
    "divergence: SGD lr 4 from the start (mlp, b128, 3 ep)": Recipe(
        n_train=8192, batch=128, epochs=3, lr=4.0, expected=("divergence", "nonfinite", "loss_spike", "not_learning")),
    "shuffled labels (cnn, b32, 6 ep)": Recipe(
        model="cnn", n_train=3200, batch=32, epochs=6, lr=0.05, plant="shuffle_labels", expected=("not_learning",)),
    "shuffled labels, short (mlp, b64, 2 ep)": Recipe(
        n_train=4096, batch=64, epochs=2, plant="shuffle_labels", expected=("not_learning",)),
    # ---- healthy
    "mlp sgd b64 (10 ep)": Recipe(n_train=4096, batch=64, epochs=10),
    "mlp sgd b8, small noisy batches (2 ep)": Recipe(n_train=4096, batch=8, epochs=2, lr=0.02),
    "mlp sgd b8 on easy data, loss near 0 (2 ep)": Recipe(n_train=4096, batch=8, epochs=2, lr=0.02, signal=1.0),
    "mlp adam b256, long (40 ep)": Recipe(n_train=8192, batch=256, epochs=40, opt="adam", lr=1e-3),
    "cnn sgd momentum b32 (3 ep)": Recipe(model="cnn", n_train=6400, batch=32, epochs=3),
    "cnn adam b128 (8 ep)": Recipe(model="cnn", n_train=6400, batch=128, epochs=8, opt="adam", lr=2e-3),
    "cnn adam b8, short and noisy (1 ep)": Recipe(model="cnn", n_train=3200, batch=8, epochs=1, opt="adam", lr=1e-3),
    "mlp 100 classes, hard (adam, b64, 6 ep)": Recipe(n_train=12800, classes=100, signal=0.3, batch=64, epochs=6,
                                                      opt="adam", lr=1e-3),
    "cnn heavy augmentation (noise, shifts, flips)": Recipe(model="cnn", n_train=6400, batch=64, epochs=4, augment=True),
    "mlp mixup 0.4 (b64)": Recipe(n_train=4096, batch=64, epochs=6, mixup=0.4),
    "cnn label smoothing 0.1 (b64)": Recipe(model="cnn", n_train=6400, batch=64, epochs=4, label_smoothing=0.1),
    "cnn warm-up 2 ep then cosine, slow start (b32)": Recipe(model="cnn", n_train=3200, batch=32, epochs=6,
                                                           schedule="warmup_cosine", lr=0.1),
    "mlp step decay, converged plateau (b128, 30 ep)": Recipe(n_train=4096, batch=128, epochs=30, schedule="step",
                                                            lr=0.1),
    "mlp grad accumulation x4 of b8": Recipe(n_train=4096, batch=8, epochs=2, accum=4, lr=0.05),
    "cnn adamw wd 0.05 + grad clip 1.0 (b16)": Recipe(model="cnn", n_train=3200, batch=16, epochs=2, opt="adamw",
                                                     lr=1e-3, weight_decay=0.05, clip=1.0),
    "mlp DataLoader num_workers=2 (b128)": Recipe(n_train=8192, batch=128, epochs=3, workers=2,
                                                 extra={"hidden": 512}),  # enough compute for 2 workers to keep up
    "resume: a new process loads state_dict at epoch 3 of 6 (cnn, b64)": Recipe(
        model="cnn", n_train=6400, batch=64, epochs=6, phases=2, plant="resume"),
    "fine-tune a saved model on 5 new classes (cnn, b32)": Recipe(
        model="cnn", n_train=3200, batch=32, epochs=3, phases=2, plant="finetune", lr=0.01),
    "continue a converged model at a low LR (mlp, b64, 10 ep)": Recipe(
        n_train=4096, batch=64, epochs=10, phases=2, plant="continue", lr=0.002),
}


# ---------------------------------------------------------------------------------------------- data and models


def make_data(r: Recipe, n: int, seed: int, classes: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same task for every split of a recipe (fixed centres / templates), fresh samples per seed."""
    classes = classes or r.classes
    signal = r.signal if r.signal is not None else 0.35 if r.model == "mlp" else 0.12
    task = torch.Generator().manual_seed(1000 + classes)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    if r.model == "mlp":
        dim = r.extra.get("dim", 32)
        centres = torch.randn(classes, dim, generator=task) * signal
        return torch.randn(n, dim, generator=g) + centres[y], y
    templates = nn.functional.interpolate(torch.randn(classes, 3, 4, 4, generator=task), size=16, mode="bilinear",
                                          align_corners=False)
    templates = templates / templates.std(dim=(1, 2, 3), keepdim=True)
    return torch.randn(n, 3, 16, 16, generator=g) + signal * templates[y], y


def make_model(r: Recipe, classes: Optional[int] = None) -> nn.Module:
    classes = classes or r.classes
    if r.model == "mlp":
        dim, hidden = r.extra.get("dim", 32), r.extra.get("hidden", 128)  # wider: compute-bound, not loader-bound
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, classes))
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, classes),
    )  # fmt: skip


class SleepyDataset(Dataset):
    """A Dataset whose __getitem__ costs time: a sleep (a slow disk) or a per-sample transform in Python."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, sleep_s: float = 0.0, transform_reps: int = 0) -> None:
        self.x, self.y, self.sleep_s, self.reps = x, y, sleep_s, transform_reps

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.sleep_s:
            time.sleep(self.sleep_s)
        for _ in range(self.reps):  # a "normalise, jitter, clamp" written per sample
            x = ((x - x.mean()) / (x.std() + 1e-6) + 0.01 * torch.randn_like(x)).clamp(-5, 5)
        return x, self.y[i]


def make_optimizer(r: Recipe, params) -> torch.optim.Optimizer:
    if r.opt == "adam":
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
    if r.opt == "adamw":
        return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.SGD(params, lr=r.lr, momentum=0.9, weight_decay=r.weight_decay or 5e-4)


def make_schedule(r: Recipe, opt: torch.optim.Optimizer, steps: int):
    """Stepped once per optimizer step; None for a constant LR."""
    if r.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    if r.schedule == "warmup_cosine":  # linear warm-up over the first third, then cosine
        warm = steps // 3
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                                 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    if r.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, steps // 3), gamma=0.1)
    if r.schedule == "exp_bug":  # meant gamma=0.99 per epoch; written 1.01 and stepped per batch
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.01)
    return None


# ---------------------------------------------------------------------------------------------- the loop


def train(r: Recipe, phase: int = 1, state_path: Optional[Path] = None, lines: Optional[list] = None) -> dict:
    """One recipe (or one phase of a two-process recipe), the way a user writes the loop."""
    torch.manual_seed(r.seed + phase)
    if phase == 1 and r.plant in ("finetune", "continue"):  # the model to start from, trained at a usual LR
        r = replace(r, lr=0.05)
    classes = 5 if (r.plant == "finetune" and phase == 2) else r.classes
    x_train, y_train = make_data(r, r.n_train, seed=r.seed + 10 * phase, classes=classes)
    x_val, y_val = make_data(r, r.n_val, seed=r.seed + 99, classes=classes)
    if r.plant == "shuffle_labels":  # the label file no longer matches the images (val labels stay right)
        y_train = y_train[torch.randperm(len(y_train), generator=torch.Generator().manual_seed(7))]
    if r.plant == "slow_dataset":
        dataset: Dataset = SleepyDataset(x_train, y_train, sleep_s=0.001)
    elif r.plant == "slow_transform":
        dataset = SleepyDataset(x_train, y_train, transform_reps=8)
    else:
        dataset = TensorDataset(x_train, y_train)
    loader = DataLoader(dataset, batch_size=r.batch, shuffle=True, num_workers=r.workers,
                        persistent_workers=r.workers > 0)
    steps_per_epoch = len(loader)
    epochs = range(1, r.epochs + 1)
    if r.phases == 2:  # phase 1 trains the first half (or the model to fine-tune), phase 2 the rest
        half = r.epochs // 2 if r.plant == "resume" else r.epochs
        epochs = range(1, half + 1) if phase == 1 else range(half + 1 if r.plant == "resume" else 1, r.epochs + 1)
    model = make_model(r, r.classes)
    opt = make_optimizer(r, model.parameters())
    sched = make_schedule(r, opt, r.epochs * steps_per_epoch // r.accum)
    w = Watcher(**SEED_MONITOR, printer=(lines.append if lines is not None else print))
    if phase == 2:
        saved = torch.load(state_path, weights_only=False)
        model.load_state_dict(saved["model"])
        if r.plant == "resume":  # the same run continues: optimizer, schedule, watch
            opt.load_state_dict(saved["opt"])
            if sched is not None:
                sched.load_state_dict(saved["sched"])
            w.load_state_dict(saved["watch"])
        elif r.plant == "finetune":  # a new head for the new classes, the backbone kept, a lower LR
            model[-1] = nn.Linear(model[-1].in_features, classes)
            opt = make_optimizer(r, model.parameters())
        else:  # "continue": the converged model, fresh optimizer at a low LR
            opt = make_optimizer(r, model.parameters())
    loss_fn = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
    plant_at = int(0.4 * r.epochs * steps_per_epoch)
    seen: list[torch.Tensor] = []  # the leak: a debugging list that keeps every batch
    step = w.step_count
    reports = []
    trace: dict[str, list] = {"loss": [], "rss_mb": [], "val_acc": [], "val_loss": []}  # for tuning, not the watch
    for _ in epochs:
        model.train()
        for i, (x, y) in enumerate(w.watch(loader)):
            step += 1
            if r.plant == "keep_batches":
                seen.append(x)
            if r.plant == "corrupt_batch" and step == plant_at:
                x = x * 40  # one batch that skipped its normalisation
            if r.plant == "mislabel_batch" and step == plant_at:
                y = torch.zeros_like(y)  # one batch read with the wrong label column
            if r.plant == "nan_sample" and step == int(0.3 * r.epochs * steps_per_epoch):
                x = x.clone()
                x[0, 0] = float("nan")
            if r.plant == "lr_jump":
                for group in opt.param_groups:
                    group["lr"] = r.lr * (100 if step == plant_at else 1)
            if r.augment:
                x = x + 0.5 * torch.randn_like(x)
                x = torch.roll(x, shifts=(int(torch.randint(-3, 4, ())), int(torch.randint(-3, 4, ()))), dims=(2, 3))
                if torch.rand(()) < 0.5:
                    x = x.flip(3)
            if r.mixup:
                lam = float(torch.distributions.Beta(r.mixup, r.mixup).sample())
                perm = torch.randperm(len(y))
                out = model(lam * x + (1 - lam) * x[perm])
                loss = lam * loss_fn(out, y) + (1 - lam) * loss_fn(out, y[perm])
            else:
                out = model(x)
                loss = loss_fn(out, y)
            (loss / r.accum).backward()
            if (i + 1) % r.accum == 0:
                if r.clip:
                    nn.utils.clip_grad_norm_(model.parameters(), r.clip)
                opt.step()
                opt.zero_grad()
                if sched is not None:
                    sched.step()
            w.step(loss=loss)
            trace["loss"].append(float(loss.detach()))
            if step % 10 == 0:
                trace["rss_mb"].append((step, rss_mb()))
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            val_loss = float(loss_fn(out, y_val))
            val_acc = float((out.argmax(1) == y_val).float().mean())
        model.train()
        trace["val_acc"].append(val_acc)
        trace["val_loss"].append(val_loss)
        reports.append(w.epoch_end(val_loss=val_loss, val_acc=val_acc, num_classes=classes))
    result = {"steps": w.step_count, "events": [e.to_dict() for e in w.events], "val_acc": val_acc,
              "val_loss": val_loss, "train_loss": reports[-1]["loss_mean"], "steps_per_epoch": steps_per_epoch,
              "summary": w.summary(), "trace": trace}
    if r.phases == 2 and phase == 1:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict() if sched is not None else None, "watch": w.state_dict()}, state_path)
    w.close()
    return result


# ---------------------------------------------------------------------------------------------- the table


def run_one(name: str, timeout: float, **changes: Any) -> dict:
    """Each recipe (each phase) in its own process, as a user runs a script. `changes`: recipe fields to
    change (the tests run smaller versions)."""
    r = replace(RECIPES[name], **changes)
    with tempfile.TemporaryDirectory() as tmp:
        result: dict = {}
        started = time.perf_counter()
        for phase in range(1, r.phases + 1):
            out = Path(tmp) / f"phase{phase}.json"
            cmd = [sys.executable, __file__, "--recipe", name, "--phase", str(phase), "--json", str(out),
                   "--state", str(Path(tmp) / "state.pt"), *(f"--set={k}={json.dumps(v)}" for k, v in changes.items())]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if proc.returncode != 0:
                return {"name": name, "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
            phase_result = json.loads(out.read_text())
            if r.plant == "resume" or phase == r.phases:
                result = phase_result  # a resumed watch holds the first phase's events too
        result["name"] = name
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["expected"] = r.expected
        total = r.epochs * result["steps_per_epoch"]
        result["run_steps"] = total if r.plant == "resume" or r.phases == 1 else result["steps"]
    return result


def warnings_of(result: dict) -> list[dict]:
    return [e for e in result.get("events", []) if e["severity"] in ("warning", "critical")]


def row_cells(result: dict) -> tuple[str, str, str]:
    r = RECIPES[result["name"]]
    if "error" in result:
        return "error: " + result["error"], "-", "-"
    warns = warnings_of(result)
    firsts: dict[str, int] = {}
    for e in warns:
        firsts.setdefault(e["kind"], e["step"])
    seen = ", ".join(f"{k} @{s}" for k, s in firsts.items()) or "-"
    if r.expected is None:
        return seen, "-", str(len(warns)) if warns else "0"
    hits = [e for e in warns if e["kind"] in r.expected]
    caught = (f"{hits[0]['step']} / {result['run_steps']} ({hits[0]['step'] / result['run_steps']:.0%})"
              if hits else "**missed**")
    false = [e for e in warns if e["kind"] not in r.expected]
    return seen, caught, str(len(false))


def table(results: list[dict]) -> str:
    lines = ["| recipe | watch said (first step of each kind) | fault flagged at step / run (share) | false alarms "
             "| val acc at end |", "| --- | --- | --- | --- | --- |"]
    for result in results:
        r = RECIPES[result["name"]]
        seen, caught, false = row_cells(result)
        kind = "fault" if r.expected else "healthy"
        acc = f"{result['val_acc']:.1%}" if "val_acc" in result else "-"
        lines.append(f"| {result['name']} ({kind}) | {seen} | {caught} | {false} | {acc} |")
    return "\n".join(lines)


BEGIN, END = "<!-- standalone zoo: begin -->", "<!-- standalone zoo: end -->"


def write_doc(doc: Path, results: list[dict], seconds: float, command: str) -> None:
    faults = [x for x in results if RECIPES[x["name"]].expected]
    healthy = [x for x in results if not RECIPES[x["name"]].expected]
    caught = sum(1 for x in faults if "missed" not in row_cells(x)[1] and "error" not in x)
    false = sum(int(row_cells(x)[2]) for x in healthy if row_cells(x)[2].isdigit())
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"{BEGIN}\n## The standalone zoo: the `Watcher` alone in hand-written loops\n\n"
        "Produced by `bench/watch_loop_zoo.py`: plain PyTorch loops with the seed monitor's arguments "
        "(`Watcher(print_every=100, show_gpu=True, warn_on_leak=True, warn_on_bottleneck=True, "
        "warn_on_variance=True)`), no model, optimizer, planned steps or classes given to it except "
        "`epoch_end(val_loss=..., val_acc=..., num_classes=...)`; data from tensors built in the script; each "
        "recipe in its own process with one torch thread. Steps are `step()` calls.\n\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, Python "
        f"{platform.python_version()}, torch {torch.__version__}; {when}; {seconds:.0f} s in all.\n"
        f"Command: `{command}`\n\n"
        f"Faults caught: {caught} of {len(faults)}; false alarms on {len(healthy)} healthy recipes: {false}.\n\n"
        + table(results) + f"\n{END}"
    )
    text = doc.read_text() if doc.is_file() else "# The watch zoo\n"
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe")
    p.add_argument("--phase", type=int, default=1)
    p.add_argument("--json")
    p.add_argument("--state")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="with --recipe: change a field of the recipe (a smaller run for the tests)")
    p.add_argument("--only", action="append", help="run only recipes whose name contains this (repeatable)")
    p.add_argument("--out", default="runs/loop-zoo")
    p.add_argument("--doc", default="docs/watch-zoo.md")
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.recipe:  # one recipe, in this process
        lines: list[str] = []
        recipe = replace(RECIPES[args.recipe], **{k: json.loads(v) for k, v in (x.split("=", 1) for x in args.set)})
        result = train(recipe, args.phase, Path(args.state) if args.state else None, lines)
        result["lines"] = lines
        Path(args.json).write_text(json.dumps(result, default=str))
        return
    names = [n for n in RECIPES if not args.only or any(o.lower() in n.lower() for o in args.only)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = []
    for name in names:
        result = run_one(name, args.timeout)
        print(f"{name}: {row_cells(result)} ({result.get('seconds')} s)", flush=True)
        results.append(result)
    kept_path = out / "loop_zoo.json"
    if args.only and kept_path.is_file():  # a partial re-run replaces its rows in the last full table
        fresh = {x["name"]: x for x in results}
        kept = {x["name"]: x for x in json.loads(kept_path.read_text())}
        results = [fresh.get(n) or kept[n] for n in RECIPES if n in fresh or n in kept]
    kept_path.write_text(json.dumps(results, indent=1, default=str))
    command = "PYTHONPATH=src python bench/watch_loop_zoo.py" + "".join(f" --only '{o}'" for o in args.only or [])
    write_doc(Path(args.doc), results, time.time() - started, command)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
