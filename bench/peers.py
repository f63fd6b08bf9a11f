"""trainlab.fit against Lightning's Trainer and a plain hand-written PyTorch loop: speed, and resume after SIGTERM.

The same user model (a small CNN defined here, not trainlab's registry), the same map-style Dataset class
(synthetic uint8 images made here, with a random flip drawn from torch's generator inside `__getitem__`), the
same optimizer (SGD, momentum 0.9, constant LR, no weight decay), batch size, `num_workers` and torch threads,
trained three ways, each in a fresh process (imports and process start are outside every figure):

- trainlab: `trainlab.fit(None, overrides..., model=net, train_data=ds, val_data=val_ds)`, its defaults kept
  (console lines, metrics.csv, steps.jsonl, TensorBoard, the watch, a checkpoint every epoch, start checks).
- Lightning: a LightningModule around the same net, `Trainer(accelerator=cpu, devices=1)`, its defaults kept
  (progress bar, TensorBoard logger, model summary, sanity validation, `self.log` of the losses) plus one
  `ModelCheckpoint(dirpath=..., save_top_k=-1, save_last=True, save_on_exception=True)`: a checkpoint every
  epoch, as the others write, and the one on an exception Lightning 2.6 can add (it costs nothing otherwise).
- plain: the loop a person writes: DataLoader(shuffle=True), forward, cross-entropy, backward, step; a
  validation pass and `torch.save({epoch, model, optimizer})` after each epoch.

Speed: the period between the last optimizer step of epoch e-1 and that of epoch e (e >= 2), taken from a step
hook in each (trainlab `on_step_end`, Lightning `on_train_batch_end`, inline in the loop), so it holds one
epoch's training, the previous epoch's validation and checkpoint, logging and the loader's restart, the same
span in all three. Rounds run the three one after the other (order rotated per round: the machine's speed
drifts), and the per-round ratios to the plain loop are the comparable figures. Each period is also taken in
the process's CPU time (`time.process_time`, all its threads): on a machine other jobs load, wall time per step
swings 3x from minute to minute while CPU time per epoch barely moves.

Resume: each is SIGTERMed by itself at a fixed optimizer step in the middle of epoch 2 (a step hook calls
os.kill on its own process), then resumed as its user would, and the final weights (parameters and BatchNorm
buffers) are compared with those of an uninterrupted run of round 1:
- trainlab: the same script again (it continues the unfinished run in the same run.dir);
- Lightning: `fit(ckpt_path=...)` from the epoch-end checkpoint (all that its defaults leave), and from the
  checkpoint `save_on_exception=True` writes on the SIGTERM;
- plain: restart from the last epoch checkpoint (SIGTERM's default action ends the process on the spot).

    python bench/peers.py --quick                       # tiny sizes, < 2 min: the script works
    python bench/peers.py --rounds 5 --out peers.json   # the benchmark (BENCHMARKS.md)

The script puts its checkout's `src/` first on sys.path (and its children's), so it measures that code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if (SRC / "trainlab").is_dir():
    sys.path.insert(0, str(SRC))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

WAYS = ("plain", "trainlab", "lightning")
NUM_CLASSES = 10
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# ---------------------------------------------------------------- the user's code (the same for all three)


class Net(nn.Module):
    """A small CNN of the user's own: three conv-BN-ReLU blocks, global pooling, a linear head."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(3, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
                                      block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FlipNormalize:
    """uint8 CHW -> normalised float; a horizontal flip with probability 0.5 from torch's generator."""

    def __init__(self, flip: bool):
        self.flip = flip
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return (image.float().div(255.0) - self.mean) / self.std


class Blobs(Dataset):
    """Synthetic 10-class images: noise, plus a bright square whose position and colour say the class."""

    classes = [f"c{i}" for i in range(NUM_CLASSES)]

    def __init__(self, n: int, seed: int, size: int = 32, transform=None):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        self.images = torch.randint(0, 90, (n, 3, size, size), generator=g, dtype=torch.uint8)
        cell = size // 4
        jitter = torch.randint(0, max(1, cell // 2), (n, 2), generator=g)
        for i, label in enumerate(self.labels.tolist()):
            row, col = divmod(label, 4)
            y, x = row * cell + int(jitter[i, 0]), col * cell + int(jitter[i, 1])
            self.images[i, label % 3, y : y + cell, x : x + cell] = 230
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        return (self.transform(image) if self.transform else image), int(self.labels[i])


def make_parts(a: argparse.Namespace):
    """The net (seeded init, identical in all three), the train and val datasets."""
    torch.manual_seed(0)
    net = Net(NUM_CLASSES, a.width)
    train = Blobs(a.train_size, 1, a.img_size, FlipNormalize(flip=True))
    val = Blobs(a.val_size, 2, a.img_size, FlipNormalize(flip=False))
    return net, train, val


def optimizer_for(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=0.0)


LR = 0.05


@torch.no_grad()
def accuracy(net: nn.Module, val: Dataset, device: torch.device) -> float:
    """The same scoring for all three: top-1 % of the final weights on the val set."""
    was = net.training
    net.eval()
    right = 0
    for images, labels in DataLoader(val, batch_size=256):
        right += int((net(images.to(device)).argmax(1).cpu() == labels).sum())
    net.train(was)
    return 100.0 * right / len(val)


# ---------------------------------------------------------------- one way, in a child process


class StepClock:
    """Step-end timestamps, and the self-inflicted SIGTERM at optimizer step `kill_at` (1-based)."""

    def __init__(self, kill_at: int, device: torch.device):
        self.times: list[float] = []
        self.cpu: list[float] = []  # the process's CPU time (all its threads): robust to other processes' load
        self.kill_at, self.cuda = kill_at, device.type == "cuda"

    def tick(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        if self.kill_at and len(self.times) == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)


def run_plain(a, net, train, val, device, clock: StepClock, out: dict) -> None:
    ckpt = Path(a.dir) / "checkpoint.pt"
    net.to(device)
    opt = optimizer_for(net.parameters())
    start_epoch = 1
    if ckpt.is_file():  # the typical resume: from the last epoch's checkpoint
        state = torch.load(ckpt, map_location=device)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        out["resumed_from"] = f"epoch {state['epoch']} checkpoint"
    loader = DataLoader(train, batch_size=a.batch_size, shuffle=True, num_workers=a.num_workers)
    val_loader = DataLoader(val, batch_size=a.batch_size, num_workers=a.num_workers)
    for epoch in range(start_epoch, a.epochs + 1):
        net.train()
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(net(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            clock.tick()
        net.eval()
        total, right = 0.0, 0
        with torch.no_grad():
            for images, labels in val_loader:
                images, labels = images.to(device), labels.to(device)
                logits = net(images)
                total += float(F.cross_entropy(logits, labels, reduction="sum"))
                right += int((logits.argmax(1) == labels).sum())
        print(f"epoch {epoch}: val loss {total / len(val):.4f} acc {100 * right / len(val):.1f}%", flush=True)
        torch.save({"epoch": epoch, "model": net.state_dict(), "optimizer": opt.state_dict()}, ckpt)
    out["status"] = "finished"


def run_trainlab(a, net, train, val, device, clock: StepClock, out: dict) -> None:
    import trainlab

    class Hooks(trainlab.Callback):
        def on_step_end(self, run, step):
            clock.tick()

    overrides = [f"run.dir={Path(a.dir) / 'run'}", f"train.epochs={a.epochs}", f"data.batch_size={a.batch_size}",
                 f"data.num_workers={a.num_workers}", "optim.name=sgd", f"optim.lr={LR}", "optim.momentum=0.9",
                 "optim.weight_decay=0", "sched.name=constant", "train.seed=0", f"train.threads={a.threads}",
                 f"train.device={device.type}", "train.precision=32", "train.channels_last=false"]  # fmt: skip
    had = sorted(p.name for p in (Path(a.dir) / "run" / "checkpoints").glob("*.pt"))
    result = trainlab.fit(None, *overrides, model=net, train_data=train, val_data=val, callbacks=[Hooks()])
    out["status"] = result.status
    if result.status == "stopped":
        out["exit_by"] = "fit returned 'stopped'"
        out["checkpoints"] = sorted(p.name for p in (Path(a.dir) / "run" / "checkpoints").glob("*.pt"))
    out["resumed_from"] = f"the same script again ({', '.join(had)})" if had else None


def run_lightning(a, net, train, val, device, clock: StepClock, out: dict) -> None:
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Module(L.LightningModule):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            images, labels = batch
            loss = F.cross_entropy(self.net(images), labels)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            images, labels = batch
            logits = self.net(images)
            self.log("val_loss", F.cross_entropy(logits, labels))
            self.log("val_acc", (logits.argmax(1) == labels).float().mean())

        def configure_optimizers(self):
            return optimizer_for(self.parameters())

    class Hooks(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.tick()

    checkpoints = ModelCheckpoint(dirpath=Path(a.dir) / "ckpt", save_top_k=-1, save_last=True,
                                  save_on_exception=True)  # fmt: skip
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=a.epochs,
                        default_root_dir=a.dir, callbacks=[checkpoints, Hooks()])  # fmt: skip
    loader = DataLoader(train, batch_size=a.batch_size, shuffle=True, num_workers=a.num_workers)
    val_loader = DataLoader(val, batch_size=a.batch_size, num_workers=a.num_workers)
    out["exit_by"] = "returned"
    try:
        trainer.fit(Module(net), loader, val_loader, ckpt_path=a.resume or None)
    except SystemExit as stop:  # Lightning turns SIGTERM into SIGTERMException (a SystemExit) at the step end
        out["exit_by"] = f"{type(stop).__name__}({stop.code})"
        out["status"] = "stopped"
        out["checkpoints"] = sorted(p.name for p in (Path(a.dir) / "ckpt").glob("*.ckpt"))
        raise
    net.to(device)
    out["status"] = "finished" if trainer.global_step >= a.epochs * steps_per_epoch(a) else "stopped"
    out["resumed_from"] = Path(a.resume).name if a.resume else None
    out["lightning_global_step"] = trainer.global_step


def steps_per_epoch(a) -> int:
    return math.ceil(a.train_size / a.batch_size)


def child(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    net, train, val = make_parts(a)
    out: dict = {"way": a.child, "pid": os.getpid(), "kill_at": a.kill_at, "resume": a.resume}
    clock = StepClock(a.kill_at, device)
    result = Path(a.result)

    def write() -> None:
        out["step_times"], out["step_cpu"] = clock.times, clock.cpu
        result.write_text(json.dumps(out))

    run = {"plain": run_plain, "trainlab": run_trainlab, "lightning": run_lightning}[a.child]
    began = time.perf_counter()
    try:
        run(a, net, train, val, device, clock, out)
    finally:  # the plain loop dies of its SIGTERM before this: its parent reads the return code
        out["fit_s"] = time.perf_counter() - began
        write()
    if out.get("status") == "finished":
        net = net.cpu()
        torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, Path(a.dir) / "final.pt")
        out["val_acc"] = accuracy(net, val, torch.device("cpu"))
        write()


# ---------------------------------------------------------------- the parent: rounds, resume, tables


def launch(a, way: str, workdir: Path, name: str, kill_at: int = 0, resume: str = "") -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", way, "--dir", str(workdir),
           "--result", str(workdir / f"{name}.json"), "--kill-at", str(kill_at), "--resume", resume,
           "--train-size", str(a.train_size), "--val-size", str(a.val_size), "--img-size", str(a.img_size),
           "--batch-size", str(a.batch_size), "--epochs", str(a.epochs), "--num-workers", str(a.num_workers),
           "--threads", str(a.threads), "--width", str(a.width), "--device", a.device]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    log = open(workdir / f"{name}.log", "w")  # noqa: SIM115 (closed by the child's exit)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def finish(proc: subprocess.Popen, workdir: Path, name: str) -> dict:
    code = proc.wait()
    path = workdir / f"{name}.json"
    out = json.loads(path.read_text()) if path.is_file() else {"step_times": [], "step_cpu": []}
    out["returncode"] = code
    if code != 0 and out.get("status") is None:
        out["status"] = "killed by SIGTERM" if code == -signal.SIGTERM else f"failed (exit {code})"
    return out


def epoch_periods(times: list[float], per_epoch: int) -> list[float]:
    """Seconds from the last step of epoch e-1 to the last step of epoch e, for e >= 2."""
    ends = [times[e * per_epoch - 1] for e in range(1, len(times) // per_epoch + 1)]
    return [b - a for a, b in zip(ends, ends[1:])]


def weights_diff(a_path: Path, b_path: Path) -> dict:
    a, b = torch.load(a_path), torch.load(b_path)
    diffs = [float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()]
    bitwise = all(torch.equal(a[k], b[k]) for k in a)
    return {"bitwise": bitwise, "max_abs_diff": max(diffs) if diffs else 0.0}


def fmt_ratio(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def timed_rounds(a, root: Path, report: dict) -> dict[str, Path]:
    per_epoch = steps_per_epoch(a)
    references: dict[str, Path] = {}
    rounds = []
    for r in range(a.rounds):
        order = WAYS[r % 3:] + WAYS[: r % 3]
        row = {"round": r + 1, "order": list(order), "load_before": os.getloadavg()[0]}
        for way in order:
            workdir = root / f"round{r + 1}-{way}"
            out = finish(launch(a, way, workdir, "timed"), workdir, "timed")
            if out.get("status") != "finished":
                raise SystemExit(f"{way} in round {r + 1} did not finish ({out.get('status')}); see {workdir}/timed.log")
            periods = epoch_periods(out["step_times"], per_epoch)
            cpu = epoch_periods(out["step_cpu"], per_epoch)
            row[way] = {"epoch_s": statistics.median(periods), "periods": periods, "fit_s": out["fit_s"],
                        "epoch_cpu_s": statistics.median(cpu), "cpu_periods": cpu, "val_acc": out.get("val_acc")}  # fmt: skip
            if r == 0:
                references[way] = workdir / "final.pt"
            else:
                row[way]["repeats_round1_bitwise"] = weights_diff(references[way], workdir / "final.pt")["bitwise"]
            if not a.keep:
                for sub in ("run", "ckpt", "lightning_logs"):
                    shutil.rmtree(workdir / sub, ignore_errors=True)
        row["load_after"] = os.getloadavg()[0]
        for way in ("trainlab", "lightning"):
            row[f"{way}/plain"] = row[way]["epoch_s"] / row["plain"]["epoch_s"]
            row[f"{way}/plain cpu"] = row[way]["epoch_cpu_s"] / row["plain"]["epoch_cpu_s"]
            row[f"{way}/plain fit"] = row[way]["fit_s"] / row["plain"]["fit_s"]
        row["trainlab/lightning"] = row["trainlab"]["epoch_s"] / row["lightning"]["epoch_s"]
        row["trainlab/lightning cpu"] = row["trainlab"]["epoch_cpu_s"] / row["lightning"]["epoch_cpu_s"]
        rounds.append(row)
        print(f"round {r + 1} ({' '.join(order)}), load {row['load_before']:.1f}-{row['load_after']:.1f}: "
              + ", ".join(f"{w} {row[w]['epoch_s']:.2f} s/epoch" for w in WAYS)
              + f"; trainlab/plain {row['trainlab/plain']:.3f}, lightning/plain {row['lightning/plain']:.3f} "
              f"(CPU time: {row['trainlab/plain cpu']:.3f}, {row['lightning/plain cpu']:.3f})",
              flush=True)  # fmt: skip
    report["rounds"] = rounds
    report["speed"] = {key: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                       for key in ("trainlab/plain", "lightning/plain", "trainlab/lightning", "trainlab/plain fit",
                                   "lightning/plain fit", "trainlab/plain cpu", "lightning/plain cpu",
                                   "trainlab/lightning cpu") for v in [[row[key] for row in rounds]]}  # fmt: skip
    return references


def resume_drill(a, root: Path, references: dict[str, Path], report: dict) -> None:
    """SIGTERM at step kill_at (mid epoch 2), then each one's resume; the children of a phase run at once
    (the results do not depend on timing)."""
    per_epoch = steps_per_epoch(a)
    kill_at = per_epoch + per_epoch // 2
    dirs = {way: root / f"resume-{way}" for way in WAYS}
    stops = {way: finish(p, dirs[way], "stopped") for way, p in
             [(way, launch(a, way, dirs[way], "stopped", kill_at=kill_at)) for way in WAYS]}  # fmt: skip
    ckpts = sorted((dirs["lightning"] / "ckpt").glob("*.ckpt"))
    epoch_end = next((p for p in ckpts if p.name.startswith("epoch=0-")), None)
    on_exception = next((p for p in ckpts if p.name.startswith("epoch=1-")), None)
    resumes = {"trainlab": ("trainlab", dirs["trainlab"], ""), "plain": ("plain", dirs["plain"], "")}
    for tag, label, ckpt in (("epoch-end", "lightning (epoch-end ckpt)", epoch_end),
                             ("on-exception", "lightning (save_on_exception ckpt)", on_exception)):  # fmt: skip
        if ckpt is not None:  # each resume in a copy of the stopped run's folder
            workdir = root / f"resume-lightning-{tag}"
            shutil.copytree(dirs["lightning"], workdir)
            resumes[label] = ("lightning", workdir, str(workdir / "ckpt" / ckpt.name))
    procs = {label: launch(a, way, workdir, "resumed", resume=ckpt) for label, (way, workdir, ckpt) in resumes.items()}
    rows = []
    for label, proc in procs.items():
        way, workdir, _ = resumes[label]
        stop, again = stops[way], finish(proc, workdir, "resumed")
        # the plain loop dies of the signal at once (no result file): it stopped at the step that sent it
        before = len(stop["step_times"]) if stop["step_times"] else kill_at
        row = {"way": label, "kill_at": kill_at, "steps_before_stop": before,
               "stop": stop.get("exit_by") or stop.get("status"), "returncode": stop["returncode"],
               "checkpoints_at_stop": stop.get("checkpoints"), "resumed_from": again.get("resumed_from"),
               "steps_after_resume": len(again["step_times"]), "status": again.get("status"),
               "val_acc": again.get("val_acc")}  # fmt: skip
        row["steps_total"] = row["steps_before_stop"] + row["steps_after_resume"]
        row["steps_uninterrupted"] = a.epochs * per_epoch
        if again.get("status") == "finished" and (workdir / "final.pt").is_file():
            row.update(weights_diff(references[way], workdir / "final.pt"))
        rows.append(row)
    report["resume"] = rows


def tables(a, report: dict) -> str:
    lines = [f"Time per epoch (s; median of epochs 2-{a.epochs} of each run) and ratios to the plain loop, per round:",
             "", "| round | order | load avg | plain | trainlab | Lightning | trainlab/plain | Lightning/plain | "
             "trainlab/Lightning |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row in report["rounds"]:
        lines.append(f"| {row['round']} | {' '.join(w[0].upper() for w in row['order'])} | "
                     f"{row['load_before']:.1f}-{row['load_after']:.1f} | {row['plain']['epoch_s']:.2f} | "
                     f"{row['trainlab']['epoch_s']:.2f} | {row['lightning']['epoch_s']:.2f} | "
                     f"{row['trainlab/plain']:.3f} | {row['lightning/plain']:.3f} | {row['trainlab/lightning']:.3f} |")  # fmt: skip
    rounds = report["rounds"]
    lines.append(f"| **median (range)** | | | | | | {fmt_ratio([r['trainlab/plain'] for r in rounds])} | "
                 f"{fmt_ratio([r['lightning/plain'] for r in rounds])} | "
                 f"{fmt_ratio([r['trainlab/lightning'] for r in rounds])} |")  # fmt: skip
    lines += ["", "The same periods in the process's CPU time (its threads summed; what other processes' load "
              "barely moves), s and ratios:", "",
              "| round | plain | trainlab | Lightning | trainlab/plain | Lightning/plain | trainlab/Lightning |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row in rounds:
        lines.append(f"| {row['round']} | {row['plain']['epoch_cpu_s']:.2f} | {row['trainlab']['epoch_cpu_s']:.2f} | "
                     f"{row['lightning']['epoch_cpu_s']:.2f} | {row['trainlab/plain cpu']:.3f} | "
                     f"{row['lightning/plain cpu']:.3f} | {row['trainlab/lightning cpu']:.3f} |")  # fmt: skip
    lines.append(f"| **median (range)** | | | | {fmt_ratio([r['trainlab/plain cpu'] for r in rounds])} | "
                 f"{fmt_ratio([r['lightning/plain cpu'] for r in rounds])} | "
                 f"{fmt_ratio([r['trainlab/lightning cpu'] for r in rounds])} |")  # fmt: skip
    lines += ["", f"Whole call (setup, {a.epochs} epochs, the last validation and checkpoint; imports excluded), "
              "ratio to the plain loop: trainlab " + fmt_ratio([r["trainlab/plain fit"] for r in rounds])
              + ", Lightning " + fmt_ratio([r["lightning/plain fit"] for r in rounds]) + ". Val top-1 % of the "
              "final weights (round 1): " + ", ".join(f"{w} {rounds[0][w]['val_acc']:.1f}" for w in WAYS) + "."]
    if len(rounds) > 1:
        repeat = {w: all(r[w].get("repeats_round1_bitwise") for r in rounds[1:]) for w in WAYS}
        lines.append("Uninterrupted runs repeat round 1's final weights bitwise: "
                     + ", ".join(f"{w} {'yes' if ok else 'no'}" for w, ok in repeat.items()) + ".")
    if not report.get("resume"):
        return "\n".join(lines)
    lines += ["", f"Resume after SIGTERM at optimizer step {report['resume'][0]['kill_at']} (mid epoch 2 of "
              f"{a.epochs}, {steps_per_epoch(a)} steps an epoch), final weights against the uninterrupted run:", "",
              "| way | the SIGTERM | resumed from | steps run (before + after = total; uninterrupted) | final weights |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for row in report["resume"]:
        if "bitwise" in row:
            verdict = "**bitwise equal**" if row["bitwise"] else f"differ: max abs diff {row['max_abs_diff']:.3g}"
        else:
            verdict = f"no final weights ({row['status']})"
        stop = f"{row['stop']}, exit {row['returncode']}"
        if row.get("checkpoints_at_stop"):
            stop += f"; ckpts: {', '.join(row['checkpoints_at_stop'])}"
        lines.append(f"| {row['way']} | {stop} | {row['resumed_from']} | {row['steps_before_stop']} + "
                     f"{row['steps_after_resume']} = {row['steps_total']}; {row['steps_uninterrupted']} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script works (< 2 min)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-size", type=int, default=2560)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    # One torch thread a process by default: on this shared 2-core machine two OpenMP threads per op collapse
    # (every parallel region waits for a descheduled thread: 0.05 -> 1 s a step seen), burying the comparison.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="write the results here (JSON)")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    p.add_argument("--keep", action="store_true", help="keep run dirs and checkpoints of the timed runs")
    p.add_argument("--no-resume", action="store_true", help="speed only")
    p.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--kill-at", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--resume", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    if a.quick:
        a.rounds, a.epochs, a.train_size, a.val_size, a.width = 1, 2, 256, 64, 8
    if a.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (epoch 1 is warm-up; the SIGTERM falls in epoch 2)")
    root = a.workdir or Path(tempfile.mkdtemp(prefix="peers-"))
    root.mkdir(parents=True, exist_ok=True)
    from importlib.metadata import version  # not `import lightning`: 10 s on this machine

    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "torch": torch.__version__, "lightning": version("lightning"), "cpus": os.cpu_count(),
              "device": a.device, "threads": a.threads, "load_at_start": os.getloadavg(),
              "settings": {k: v for k, v in vars(a).items() if k not in ("child", "dir", "result", "kill_at", "resume",
                                                                          "out", "workdir")}}  # fmt: skip
    report["settings"]["lr"] = LR
    print(f"{a.rounds} rounds, {a.epochs} epochs of {a.train_size} images ({steps_per_epoch(a)} steps), batch "
          f"{a.batch_size}, {a.num_workers} workers, {a.threads} threads, {a.device}; in {root}", flush=True)  # fmt: skip
    started = time.perf_counter()
    try:
        references = timed_rounds(a, root, report)
        if not a.no_resume:
            resume_drill(a, root, references, report)
    finally:
        if a.workdir is None and not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    report["load_at_end"] = os.getloadavg()
    report["wall_s"] = time.perf_counter() - started
    text = tables(a, report)
    print()
    print(text)
    print(f"\nload average {report['load_at_start'][0]:.1f} at start, {report['load_at_end'][0]:.1f} at end; "
          f"{report['wall_s']:.0f} s in all")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=1))
        print(f"results: {a.out}")


if __name__ == "__main__":
    main()
