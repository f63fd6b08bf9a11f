"""The watch zoo: real `trainlab train` runs with planted faults and healthy recipes, and what caught what.

Each row is one short real run (a tiny ResNet on the built-in shapes set, seconds each), optionally preceded by
`trainlab doctor` on the same config. Faults are planted through the config (an LR far off, a random backbone
frozen, crushing weight decay, 0..255 inputs) or through the drills of tests/drills.py, installed as a user
would install their own parts (labels shuffled: a dataset factory; BatchNorm in eval mode: a model factory; a leak,
a slow loader: callbacks). Writes docs/watch-zoo.md: fault,
caught by, step caught / steps planned, false alarms (any warning on a healthy recipe is one).

    PYTHONPATH=src python bench/watch_zoo.py [--out runs/zoo] [--doc docs/watch-zoo.md] [--no-doctor] [--only NAME]

CPU-heavy: runs one at a time with train.threads=1; on a shared machine the timings in the table are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests import drills  # noqa: E402  (the fault drills live with the tests)

BASE = ["data.name=shapes", "data.train_size=2000", "data.val_size=500", "data.img_size=16", "data.batch_size=32",
        "model.name=resnet8", "train.epochs=4", "optim.lr=0.1", "run.tensorboard=false", "run.progress=none",
        "watch.print_every=10", "train.threads=1"]  # fmt: skip

# name -> (overrides, planted faults (tests/drills.py plant), the detectors expected to catch it); expected None: a healthy recipe
RECIPES: dict[str, tuple[list[str], str, tuple[str, ...] | None]] = {
    "LR far too low (sgd 1e-4)": (["optim.lr=0.0001"], "", ("not_learning",)),
    "LR far too high (sgd 30)": (["optim.lr=30"], "", ("divergence", "nonfinite", "loss_spike", "not_learning")),
    # the shuffled drill is a Dataset through the DataLoader: two workers keep the resnet8 fed (in the main process
    # the loop waits for it 46% of a step: a true data_bottleneck, not this row's fault)
    "labels shuffled across classes": (["data.num_workers=2"], "shuffle_labels", ("not_learning",)),
    "random backbone frozen": (["model.freeze_backbone=true"], "", ("not_learning", "config_smell")),
    "crushing weight decay (0.5)": (["optim.weight_decay=0.5"], "", ("not_learning", "config_smell")),
    "unnormalised 0..255 inputs": (["data.mean=[0,0,0]", "data.std=[0.0039216,0.0039216,0.0039216]"], "",
                                   ("input_scale", "not_learning", "divergence", "loss_spike")),
    "BatchNorm in eval mode": ([], "bn_eval", ("batchnorm_mode", "not_learning", "divergence", "nonfinite")),
    "leak 300 KB/step": ([], "leak:300", ("memory_leak",)),
    "slow loader 40 ms/batch": ([], "slow_loader:40", ("data_bottleneck",)),
    "heavy policy in the main process (num_workers=0)": (["aug.policy=trivialaugment", "aug.random_erasing=0.25",
                                                          "data.loader=torch", "data.num_workers=0"], "",
                                                         ("data_bottleneck",)),
    # short runs (1-2 epochs) and long planned ones: the same faults, said within the run whatever its length
    "adadelta at its default LR stays at chance, 2 epochs (short)": (["optim.name=adadelta", "train.epochs=2"], "",
                                                                     ("not_learning",)),
    "LR far too high (sgd 30), 1 epoch (short)": (["optim.lr=30", "train.epochs=1"], "",
                                                  ("divergence", "nonfinite", "loss_spike", "not_learning")),
    "LR 1000 overflows to NaN, 1 epoch (short)": (["optim.lr=1000", "train.epochs=1"], "",
                                                  ("nonfinite", "divergence", "loss_spike", "not_learning")),
    "labels shuffled, 2 epochs (short)": (["train.epochs=2", "data.num_workers=2"], "shuffle_labels", ("not_learning",)),
    "leak 300 KB/step at batch 8, 1 epoch (short)": (["data.batch_size=8", "data.train_size=1600", "optim.lr=0.05",
                                                      "train.epochs=1"], "leak:300", ("memory_leak",)),
    "labels shuffled, 10 epochs (long)": (["train.epochs=10", "data.num_workers=2"], "shuffle_labels",
                                          ("not_learning",)),
    "LR far too low (sgd 1e-4), 12 epochs (long)": (["optim.lr=0.0001", "train.epochs=12"], "", ("not_learning",)),
    # healthy recipes: any warning is a false alarm
    "sgd one-cycle batch 32": ([], "", None),
    "sgd batch 8": (["data.batch_size=8", "optim.lr=0.05", "train.epochs=2"], "", None),
    "sgd batch 256": (["data.batch_size=256", "optim.lr=0.2", "train.epochs=12"], "", None),
    "adamw cosine warmup": (["optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.05", "sched.name=cosine",
                             "sched.warmup_epochs=1"], "", None),
    "adam constant 1e-3": (["optim.name=adam", "optim.lr=0.001", "optim.weight_decay=0", "sched.name=constant"], "",
                           None),
    "rmsprop cosine": (["optim.name=rmsprop", "optim.lr=0.001", "optim.momentum=0", "sched.name=cosine"], "", None),
    "mixup 0.2": (["aug.mixup_alpha=0.2"], "", None),
    "cutmix 1.0": (["aug.cutmix_alpha=1.0"], "", None),
    "label smoothing 0.1": (["train.label_smoothing=0.1"], "", None),
    "grad accumulation x4 (batch 8)": (["data.batch_size=8", "train.grad_accum=4", "train.epochs=2"], "", None),
    "EMA 0.99": (["train.ema_decay=0.99"], "", None),
    "heavy policy, 2 workers (trivialaugment + erasing)": (["aug.policy=trivialaugment", "aug.random_erasing=0.25",
                                                            "data.loader=torch", "data.num_workers=2"], "", None),
    "adam 1e-3 constant, 2 epochs (short)": (["optim.name=adam", "optim.lr=0.001", "optim.weight_decay=0",
                                              "sched.name=constant", "train.epochs=2"], "", None),
    "sgd batch 8, 2 epochs of 1,600 images (short, noisy)": (["data.batch_size=8", "data.train_size=1600",
                                                             "optim.lr=0.05", "train.epochs=2"], "", None),
    "sgd cosine, 12 epochs (long)": (["train.epochs=12", "sched.name=cosine"], "", None),
    "resumed after SIGTERM in epoch 2 (two processes)": ([], "resume@train:2:20", None),
    "fine-tune from a saved checkpoint (lr 0.01, 2 epochs)": (["optim.lr=0.01", "train.epochs=2"], "finetune", None),
}


NOTES = "<!-- notes: kept when the table is regenerated -->"


def run(cmd: list[str], plant: str, timeout: float, signal_at: str = "") -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # tests.drills
    extra = drills.plant(plant, train_size=2000, val_size=500) if plant else []
    if signal_at:  # the drill that stops the run with a real SIGTERM at that batch (PHASE:EPOCH:BATCH)
        extra.append(drills.self_signal(signal_at))
    at = cmd.index("--out") if "--out" in cmd else len(cmd)  # overrides go before the doctor's --out option
    cmd = [*cmd[:at], *extra, *cmd[at:]]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, time.perf_counter() - started, proc.stdout + proc.stderr


def one(name: str, out: Path, with_doctor: bool, timeout: float) -> dict:
    overrides, plant, expected = RECIPES[name]
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    run_dir = out / slug
    shutil.rmtree(run_dir, ignore_errors=True)  # a re-run starts fresh
    shutil.rmtree(out / f"{slug}-doctor", ignore_errors=True)
    items = [*BASE, *overrides]
    train_cmd = [sys.executable, "-m", "trainlab", "train", *items, f"run.dir={run_dir}"]
    if plant.startswith("resume@"):  # stopped by SIGTERM, then the same command again continues it
        plant, signal_at = "", plant.split("@", 1)[1]
        rc, seconds, text = run([*train_cmd, "run.resume=never"], plant, timeout, signal_at)
        rc, more, text = run(train_cmd, plant, timeout)
        seconds += more
    elif plant == "finetune":  # the base recipe's 2-epoch weights, fine-tuned at a lower LR
        plant = ""
        base_dir = out / f"{slug}-base"
        shutil.rmtree(base_dir, ignore_errors=True)
        run([sys.executable, "-m", "trainlab", "train", *BASE, "train.epochs=2", f"run.dir={base_dir}",
             "run.resume=never"], plant, timeout)
        items.append(f"model.pretrained={base_dir / 'checkpoints' / 'last.pt'}")
        rc, seconds, text = run([sys.executable, "-m", "trainlab", "train", *items, f"run.dir={run_dir}",
                                 "run.resume=never"], plant, timeout)
    else:
        rc, seconds, text = run([*train_cmd, "run.resume=never"], plant, timeout)
    row: dict = {"name": name, "plant": plant, "overrides": overrides, "expected": expected, "rc": rc,
                 "train_s": round(seconds, 1)}
    events = []
    if (run_dir / "events.jsonl").is_file():
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    steps = [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()
             if line.strip()] if (run_dir / "steps.jsonl").is_file() else []
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    row["planned"] = summary.get("watch", {}).get("steps") or (steps[-1] if steps else None)
    projected = [json.loads(line).get("weight_change_projected") for line in
                 (run_dir / "steps.jsonl").read_text().splitlines() if line.strip()] if steps else []
    projected = [p for p in projected if p is not None]
    row["min_projected_weight_change"] = min(projected) if projected else None  # the weights_static margin
    row["best_val_acc1"] = summary.get("best_val_acc1")
    row["events"] = [{"kind": e["kind"], "severity": e["severity"], "step": e["step"]} for e in events
                     if e["severity"] in ("warning", "critical")
                     and e["kind"] not in ("preflight", "schedule", "preempted")]  # preempted: the resume's planted stop
    if rc != 0 and not row["events"]:
        row["error"] = text.strip().splitlines()[-1] if text.strip() else f"exit {rc}"
    first_healthy = next(n for n, r in RECIPES.items() if r[2] is None)
    variant = "(short)" in name or "(long)" in name  # the same config fault as a 4-epoch row: the doctor said it there
    if with_doctor and not variant and (expected is not None or name == first_healthy):
        doc_dir = out / f"{slug}-doctor"
        rc_d, seconds_d, text_d = run([sys.executable, "-m", "trainlab", "doctor", *items, "--out", str(doc_dir)],
                                      plant, timeout)
        row["doctor_rc"], row["doctor_s"] = rc_d, round(seconds_d, 1)
        report = doc_dir / "doctor.json"
        checks = json.loads(report.read_text())["checks"] if report.is_file() else []
        row["doctor"] = [(c["check"], c["status"]) for c in checks if c["status"] in ("warning", "problem")]
    return row


def _cell_events(row: dict) -> str:
    firsts: dict[str, int] = {}
    for e in row["events"]:
        firsts.setdefault(e["kind"], e["step"])
    return ", ".join(f"{k} @{s}" for k, s in firsts.items()) or "-"


def table(rows: list[dict], with_doctor: bool) -> str:
    head = "| recipe | planted | watch caught (first step) | step caught / planned | false alarms | best val top-1 |"
    sep = "| --- | --- | --- | --- | --- | --- |"
    if with_doctor:
        head += " doctor (warning/problem) | doctor s |"
        sep += " --- | --- |"
    lines = [head, sep]
    for row in rows:
        expected = row["expected"]
        hits = [e for e in row["events"] if expected and e["kind"] in expected]
        caught = f"{hits[0]['step']} / {row['planned']}" if hits else ("missed" if expected else "-")
        if expected is None:
            false = _cell_events(row)
        else:
            unrelated = [e for e in row["events"] if e["kind"] not in expected]
            false = _cell_events({"events": unrelated}) if unrelated else "-"
        acc = f"{row['best_val_acc1']:.1f}%" if row.get("best_val_acc1") is not None else row.get("error", "-")
        planted = "; ".join(row["overrides"] + ([f"drill {row['plant']}"] if row["plant"] else [])) or "-"
        kind = "fault" if expected else "healthy"
        line = f"| {row['name']} ({kind}) | `{planted}` | {_cell_events(row)} | {caught} | {false} | {acc} |"
        if with_doctor:
            doctor = ", ".join(f"{c} {s}" for c, s in row["doctor"]) or "all ok" if "doctor" in row else "not run"
            line += f" {doctor} | {row.get('doctor_s', '-')} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/zoo")
    parser.add_argument("--doc", default="docs/watch-zoo.md")
    parser.add_argument("--no-doctor", action="store_true",
                        help="skip `trainlab doctor` (by default it runs on every fault and the first healthy recipe)")
    parser.add_argument("--only", action="append", help="run only recipes whose name contains this (repeatable)")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    out = Path(args.out)
    names = [n for n in RECIPES if not args.only or any(o.lower() in n.lower() for o in args.only)]
    rows = []
    started = time.time()
    for name in names:
        row = one(name, out, not args.no_doctor, args.timeout)
        print(f"{name}: {_cell_events(row)} (train {row['train_s']}s, doctor {row.get('doctor')})", flush=True)
        rows.append(row)
    if args.only and (out / "zoo.json").is_file():  # a partial re-run replaces its rows in the last full table
        fresh = {row["name"]: row for row in rows}
        kept = {row["name"]: row for row in json.loads((out / "zoo.json").read_text())}
        rows = [fresh.get(name) or kept[name] for name in RECIPES if name in fresh or name in kept]
    (out / "zoo.json").write_text(json.dumps(rows, indent=2))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        "# The watch zoo\n\n"
        "Planted faults and healthy recipes, each a real `trainlab train` run (and `trainlab doctor` on the same "
        "config), produced by `bench/watch_zoo.py`. A fault is caught when one of the detectors meant for it "
        "fires; on a healthy recipe every warning is a false alarm. Steps are the watch's steps (batches).\n\n"
        f"Base recipe: `{' '.join(BASE)}`.\n\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs (timings are noisy), "
        f"{platform.python_version()}; {when}; {time.time() - started:.0f} s in all.\n"
        f"Command: `PYTHONPATH=src python bench/watch_zoo.py{' --no-doctor' if args.no_doctor else ''}`\n\n"
        + table(rows, not args.no_doctor) + "\n"
    )
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    notes = doc.read_text().partition(NOTES)[2] if doc.is_file() else ""  # hand-written reading of the table
    doc.write_text(text + "\n" + NOTES + notes)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
