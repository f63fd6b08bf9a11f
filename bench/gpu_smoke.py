"""GPU smoke of every CUDA path of `trainlab`, in one time-boxed command (issue 14):

    PYTHONPATH=src python bench/gpu_smoke.py --out DIR [--budget-s 420] [--only NAME,...] [--skip NAME,...]
    PYTHONPATH=src python bench/gpu_smoke.py --out DIR --smoke      # the CPU subset: checks the plumbing

Every case runs real `trainlab` subprocesses (tiny shapes runs) with its own time limit and records
ok / failed / timeout / skipped, its duration, its figures and the tail of stderr. DIR/smoke.json and
DIR/smoke.log are rewritten after every case, so a run killed from outside still leaves what was done.
Run dirs go to a scratch folder (--work, default a temp dir), not DIR: the device tool brings back only a
few files. When the global budget is spent, the remaining cases are marked skipped; cases are ordered
cheapest / most important first, so a short budget still covers the basics.

Cases: precision 32/bf16/fp16 x channels_last; watch.on_nonfinite=stop on a planted blow-up; SIGTERM
(the SelfSignal drill of tests/drills.py) + resume with train.deterministic=true, weights compared to an uninterrupted
run; trainlab eval; tensor loader vs DataLoader; EMA; mixup; data.batch_size=auto; host-device syncs per
100 steps (the CountSyncs drill, CUDA only); the time split against the profiler's device busy time;
trainlab bench loader/step/batch; torch.compile modes with grad_accum 1 and 2 against eager runs of the
same accumulation (CUDA-graph modes must not corrupt accumulated gradients).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(REPO))
from tests import drills  # noqa: E402  (the fault drills live with the tests)

# A compiled run is "suspect" of corrupted accumulated gradients when it drifts from the eager run of the
# same accumulation by more than this. Kernel fusion changes fp32 rounding only (differences around 1e-5
# after a few dozen steps); an overwritten gradient window changes every update (loss and weights move
# by whole percents).
SUSPECT_LOSS_REL = 0.02
SUSPECT_WEIGHT_ABS = 1e-2

SIGNALLED_EXIT = 143  # trainlab's exit code after a stop signal with a resumable checkpoint


class CaseFailed(Exception):
    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail


class CaseTimeout(CaseFailed):
    pass


class Terminated(BaseException):
    """SIGTERM to this script (e.g. from `timeout`): record the case in flight, write the report, stop."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


@dataclass
class Case:
    name: str
    run: Callable[[Smoke], dict]
    timeout_s: float
    on_cpu: bool = True  # part of --smoke
    why_not_cpu: str = ""


@dataclass
class Proc:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def tail(self, lines: int = 25) -> str:
        return "\n".join((self.stdout + "\n" + self.stderr).strip().splitlines()[-lines:])


@dataclass
class Smoke:
    """What every case shares: sizes, folders, the budget, and runs other cases may reuse."""

    out: Path
    work: Path
    smoke: bool
    budget_s: float
    started: float = field(default_factory=time.perf_counter)
    runs: dict[str, Path] = field(default_factory=dict)  # case name -> its finished run dir
    deadline: float = 0.0  # perf_counter() time the current case must end by

    # ---------------------------------------------------------------- sizes

    def base(self) -> list[str]:
        if self.smoke:  # the 2-core CPU box: seconds per run
            return ["data.name=shapes", "data.train_size=128", "data.val_size=32", "data.img_size=16",
                    "data.batch_size=32", "model.name=resnet8", "train.epochs=2", "train.max_steps_per_epoch=3",
                    "run.progress=none", "run.tensorboard=false", "train.threads=1", "train.device=cpu",
                    "optim.lr=0.05"]  # fmt: skip
        return ["data.name=shapes", "data.train_size=512", "data.val_size=128", "data.img_size=32",
                "data.batch_size=64", "model.name=resnet8", "train.epochs=2", "train.max_steps_per_epoch=8",
                "run.progress=none", "run.tensorboard=false", "optim.lr=0.05"]  # fmt: skip

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    # ---------------------------------------------------------------- subprocesses

    def env(self, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINLAB_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def call(self, cmd: list[str], env: Optional[dict[str, str]] = None) -> Proc:
        """Run cmd until it ends or the case's deadline; on the deadline kill its whole process group
        (DataLoader workers, compile workers) and raise CaseTimeout."""
        started = time.perf_counter()
        timeout = max(1.0, self.deadline - started)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env(env), start_new_session=True)  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            p = Proc(cmd, -9, out, err, time.perf_counter() - started)
            raise CaseTimeout(f"timed out after {timeout:.0f} s: {' '.join(cmd[3:])}", p.tail()) from None
        except BaseException:  # Terminated (the session's `timeout`), Ctrl-C: leave no run behind
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        return Proc(cmd, proc.returncode, out, err, time.perf_counter() - started)

    def trainlab(self, *args: str, env: Optional[dict[str, str]] = None, expect: Optional[int] = 0) -> Proc:
        proc = self.call([sys.executable, "-m", "trainlab", *args], env)
        if expect is not None and proc.returncode != expect:
            raise CaseFailed(
                f"`trainlab {' '.join(args)}` exited {proc.returncode} (expected {expect})", proc.tail()
            )
        return proc

    def train(self, name: str, *overrides: str, env: Optional[dict[str, str]] = None,
              expect: Optional[int] = 0, fresh: bool = True) -> tuple[Path, Proc]:  # fmt: skip
        run_dir = self.work / name.replace("/", "_")
        if fresh and run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        proc = self.trainlab("train", *self.base(), *overrides, f"run.dir={run_dir}", env=env, expect=expect)
        return run_dir, proc


# ---------------------------------------------------------------- reading run dirs


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from trainlab.state.checkpoint import load_checked

    return load_checked(run_dir / "checkpoints" / "last.pt")["model"]


def compare_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """Bitwise equality over every entry; the largest absolute difference over floating ones."""
    if a.keys() != b.keys():
        return {"same_keys": False, "bitwise_equal": False}
    worst, worst_key = 0.0, None
    for key in a:
        if a[key].is_floating_point():
            diff = (a[key].float() - b[key].float()).abs().max().item() if a[key].numel() else 0.0
            if not math.isfinite(diff) or diff > worst:
                worst, worst_key = diff, key
    return {"same_keys": True, "bitwise_equal": all(torch.equal(a[k], b[k]) for k in a),
            "max_abs_diff": worst, "max_abs_diff_at": worst_key}  # fmt: skip


def finished_figures(run_dir: Path, epochs: int = 2) -> dict:
    """A finished run's figures; raises CaseFailed when it did not finish cleanly."""
    rows, info = metrics(run_dir), summary(run_dir)
    last = rows[-1]
    loss = float(last["train_loss"])
    if info.get("status") != "finished" or len(rows) != epochs or not math.isfinite(loss):
        raise CaseFailed(
            f"run not clean: status {info.get('status')}, {len(rows)} epochs, final train loss {loss}"
        )
    return {"device": info.get("device"), "precision": info.get("precision"), "train_loss": loss,
            "val_acc1": float(last["val_acc1"]), "epoch_time_s": float(last["epoch_time_s"]),
            "images_per_s": float(last["images_per_s"]), "peak_mem_mb": float(last["peak_mem_mb"]),
            "events": info.get("events")}  # fmt: skip


# ---------------------------------------------------------------- cases


def case_env(s: Smoke) -> dict:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_available": torch.cuda.is_available(), "host": platform.node(),
                            "cpus": os.cpu_count()}  # fmt: skip
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError as exc:
        info["torchvision"] = f"missing: {exc}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    bf16=torch.cuda.is_bf16_supported())  # fmt: skip
    for module in ("omegaconf", "psutil", "rich", "matplotlib", "tensorboard", "trainlab"):
        try:
            mod = __import__(module)
            info[module] = getattr(mod, "__version__", "present")
        except ImportError as exc:
            info[module] = f"missing: {exc}"
    return info


def train_case(precision: str, channels_last: bool, accum: int = 1) -> Callable[[Smoke], dict]:
    def run(s: Smoke) -> dict:
        name = f"train-{precision}-{'cl' if channels_last else 'nchw'}-a{accum}"
        run_dir, proc = s.train(name, f"train.precision={precision}", f"train.channels_last={channels_last}",
                                f"train.grad_accum={accum}", "train.compile=none")  # fmt: skip
        s.runs[name] = run_dir
        return finished_figures(run_dir)

    return run


def compile_case(mode: str, accum: int) -> Callable[[Smoke], dict]:
    """The compiled run against the eager run of the same config and accumulation (same seed, same data
    order): a CUDA-graph mode that overwrote the accumulated gradients would drift by whole percents."""

    def run(s: Smoke) -> dict:
        eager_name = f"train-32-nchw-a{accum}"
        eager = s.runs.get(eager_name)
        if eager is None:  # the eager case was skipped or failed: run it here
            eager, _ = s.train(eager_name, "train.precision=32", "train.channels_last=false",
                               f"train.grad_accum={accum}", "train.compile=none")  # fmt: skip
            s.runs[eager_name] = eager
        run_dir, proc = s.train(f"compile-{mode}-a{accum}", "train.precision=32", "train.channels_last=false",
                                f"train.grad_accum={accum}", f"train.compile={mode}")  # fmt: skip
        figures = finished_figures(run_dir)
        eager_loss = float(metrics(eager)[-1]["train_loss"])
        diff = compare_weights(weights(eager), weights(run_dir))
        loss_rel = abs(figures["train_loss"] - eager_loss) / max(abs(eager_loss), 1e-12)
        figures.update(eager_train_loss=eager_loss, loss_abs_diff=abs(figures["train_loss"] - eager_loss),
                       loss_rel_diff=loss_rel, weights_vs_eager=diff, wall_s=proc.seconds)  # fmt: skip
        figures["suspect_grad_corruption"] = loss_rel > SUSPECT_LOSS_REL or not (
            diff.get("max_abs_diff", math.inf) <= SUSPECT_WEIGHT_ABS
        )
        if figures["suspect_grad_corruption"]:
            raise CaseFailed(
                f"compile={mode} grad_accum={accum} drifts from eager: loss rel diff {loss_rel:.3g}, "
                f"weights max abs diff {diff.get('max_abs_diff')} at {diff.get('max_abs_diff_at')}"
            )
        return figures

    return run


def case_nonfinite_stop(s: Smoke) -> dict:
    """A planted blow-up (lr 1e38, constant schedule: the weights overflow within a step or two) must stop
    the run with exit 1, a one-line message, a checkpoint, and summary status failed."""
    run_dir, proc = s.train("nonfinite-stop", "optim.lr=1e38", "sched.name=constant", "watch.on_nonfinite=stop",
                            "train.precision=32", expect=1)  # fmt: skip
    message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    info = summary(run_dir)
    ok = ("non-finite loss" in message and "Traceback" not in proc.stderr and info.get("status") == "failed"
          and (run_dir / "checkpoints" / "last.pt").exists())  # fmt: skip
    if not ok:
        raise CaseFailed("nonfinite stop did not end as documented", proc.tail())
    return {"message": message, "status": info.get("status")}


def case_sigterm_resume(s: Smoke) -> dict:
    """Deterministic run stopped by a real SIGTERM mid-epoch 1, then the same command again; its final
    weights against an uninterrupted run of the same command."""
    common = [
        "train.deterministic=true",
        "train.precision=32",
        "train.channels_last=false",
        "watch.print_every=1",
    ]
    ref, _ = s.train("resume-reference", *common)
    s.runs["resume-reference"] = ref
    run_dir, first = s.train("resume-stopped", *common, drills.self_signal("train:1:1"),
                             expect=SIGNALLED_EXIT)  # fmt: skip
    stopped_status = summary(run_dir).get("status")
    _, second = s.train("resume-stopped", *common, fresh=False)
    figures = finished_figures(run_dir)
    diff = compare_weights(weights(ref), weights(run_dir))
    figures.update(first_exit=first.returncode, status_after_signal=stopped_status,
                   resumed_said="resum" in (second.stdout + second.stderr).lower(), weights_vs_uninterrupted=diff,
                   loss_vs_uninterrupted=abs(figures["train_loss"] - float(metrics(ref)[-1]["train_loss"])))  # fmt: skip
    if not diff.get("bitwise_equal"):
        # Not a failure by itself on a GPU (some kernels have no deterministic variant); said in the figures.
        figures["note"] = "weights not bitwise equal after resume"
    return figures


def case_eval(s: Smoke) -> dict:
    run_dir = next((s.runs[k] for k in ("resume-reference", "train-32-nchw-a1", "train-bf16-cl-a1") if k in s.runs),
                   None)  # fmt: skip
    if run_dir is None:
        run_dir, _ = s.train("eval-source", "train.precision=32")
    proc = s.trainlab("eval", str(run_dir / "checkpoints" / "last.pt"), "--json")
    result = json.loads(proc.stdout)
    val = float(metrics(run_dir)[-1]["val_acc1"])
    result["train_run_val_acc1"] = val
    if result.get("val_samples", 0) <= 0:
        raise CaseFailed("trainlab eval evaluated no images", proc.tail())
    return result


def loader_case(loader: str) -> Callable[[Smoke], dict]:
    def run(s: Smoke) -> dict:
        extra = ["data.num_workers=2", "data.persistent_workers=true"] if loader == "torch" else []
        run_dir, _ = s.train(f"loader-{loader}", f"data.loader={loader}", *extra)
        return finished_figures(run_dir)

    return run


def case_ema(s: Smoke) -> dict:
    run_dir, _ = s.train("ema", "train.ema_decay=0.99")
    figures = finished_figures(run_dir)
    ema_acc = metrics(run_dir)[-1].get("ema_val_acc1")
    if not ema_acc:
        raise CaseFailed("train.ema_decay=0.99 wrote no ema_val_acc1 in metrics.csv")
    proc = s.trainlab("eval", str(run_dir / "checkpoints" / "last.pt"), "--ema", "--json")
    figures.update(ema_val_acc1=float(ema_acc), eval_ema=json.loads(proc.stdout))
    return figures


def case_mixup(s: Smoke) -> dict:
    run_dir, _ = s.train("mixup", "aug.mixup_alpha=0.2")
    return finished_figures(run_dir)


def case_batch_auto(s: Smoke) -> dict:
    # On the CPU a model that runs out of memory above 48 images (tests/drills.py oom_model) stands in for a GPU.
    planted = ["model.name=tests.drills:oom_model", "model.kwargs={limits: '48'}"] if s.smoke else []
    run_dir, proc = s.train("batch-auto", "data.batch_size=auto", *planted)
    figures = finished_figures(run_dir)
    figures["batch_note"] = next((line.strip() for line in (proc.stdout + proc.stderr).splitlines()
                                  if "data.batch_size=auto" in line), None)  # fmt: skip
    figures["global_batch"] = summary(run_dir).get("global_batch")
    return figures


def case_syncs(s: Smoke) -> dict:
    """Host-device syncs per 100 training steps (the CountSyncs drill; CUDA only), target one per
    watch.print_every steps. 2 epochs of 64 steps (GPU); on the CPU the counter is inactive by design."""
    every = 50
    sizes = (["data.train_size=256", "data.batch_size=32", "train.max_steps_per_epoch=8"] if s.smoke
             else ["data.train_size=2048", "data.batch_size=32", "train.max_steps_per_epoch=64"])  # fmt: skip
    count_dir = s.work / "syncs-count"
    run_dir, _ = s.train(
        "syncs", *sizes, f"watch.print_every={every}", drills.callback("CountSyncs", dir=str(count_dir))
    )
    record = json.loads((count_dir / "rank0.json").read_text())
    steps = record.get("optimizer_steps") or 0
    train_syncs = record.get("by_phase", {}).get("train", 0)
    figures = {"record": record, "train_syncs": train_syncs, "optimizer_steps": steps,
               "train_syncs_per_100_steps": 100 * train_syncs / steps if steps and record.get("cuda") else None,
               "target_per_100_steps": 100 / every}  # fmt: skip
    if record.get("cuda") and steps < 100:
        raise CaseFailed(f"only {steps} optimizer steps counted; need 100+")
    return figures


PROFILED_TRAIN = r"""
import json, sys
import torch
from torch.profiler import ProfilerActivity, profile
from trainlab.commands.cli import main
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
with profile(activities=activities) as prof:
    code = main(sys.argv[2:])
# Device busy time: the union of the GPU activity intervals (kernels, copies, memsets), so work that
# overlaps on two streams counts once.
spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA)
busy_us, end = 0.0, float("-inf")
for start, stop in spans:
    if stop > end:
        busy_us += stop - max(start, end)
        end = stop
with open(sys.argv[1], "w") as f:
    json.dump({"exit": code, "device_busy_s": busy_us / 1e6, "kernels": len(spans)}, f)
sys.exit(code)
"""


def case_time_split(s: Smoke) -> dict:
    """metrics.csv's split (data + train + other = epoch_time_s, within 2%), each epoch's wall time from the
    `time` column's steps against epoch + val time, and (CUDA) the summed train_time_s against the profiler's
    device busy time over the whole run. Validation is one small batch per epoch so its kernels stay under
    ~1% of the busy time; the profiler's own overhead inflates host-side figures, not device time."""
    sizes = (["data.train_size=256", "data.val_size=32", "data.batch_size=32", "train.max_steps_per_epoch=8"]
             if s.smoke else ["data.train_size=2048", "data.val_size=64", "data.batch_size=64",
                              "train.max_steps_per_epoch=32"])  # fmt: skip
    run_dir = s.work / "time-split"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    prof_json = s.work / "time-split-profile.json"
    proc = s.call([sys.executable, "-c", PROFILED_TRAIN, str(prof_json), "train", *s.base(), *sizes,
                   "train.epochs=3", f"run.dir={run_dir}"])  # fmt: skip
    if proc.returncode != 0:
        raise CaseFailed(f"profiled trainlab train exited {proc.returncode}", proc.tail())
    rows = metrics(run_dir)
    epochs = []
    for i, row in enumerate(rows):
        parts = {k: float(row[k]) for k in ("data_time_s", "train_time_s", "other_time_s", "epoch_time_s",
                                             "val_time_s", "time")}  # fmt: skip
        split_sum = parts["data_time_s"] + parts["train_time_s"] + parts["other_time_s"]
        entry = {
            **parts,
            "split_vs_epoch_rel": abs(split_sum - parts["epoch_time_s"]) / parts["epoch_time_s"],
        }
        if i > 0:  # wall time between epoch ends: this epoch's training + validation + checkpoint writes
            wall = parts["time"] - float(rows[i - 1]["time"])
            entry.update(
                wall_between_epoch_ends_s=wall,
                epoch_plus_val_vs_wall_rel=(wall - parts["epoch_time_s"] - parts["val_time_s"]) / wall,
            )
        epochs.append(entry)
    profile = json.loads(prof_json.read_text())
    figures: dict[str, Any] = {"epochs": epochs, "profile": profile,
                               "split_within_2pct": all(e["split_vs_epoch_rel"] <= 0.02 for e in epochs)}  # fmt: skip
    if profile["kernels"]:
        compute = sum(e["train_time_s"] for e in epochs)
        figures.update(
            train_time_sum_s=compute,
            compute_vs_device_busy_rel=(compute - profile["device_busy_s"]) / profile["device_busy_s"],
        )
    if not figures["split_within_2pct"]:
        raise CaseFailed("data + train + other differs from epoch_time_s by more than 2%")
    return figures


def bench_case(what: str, *flags: str) -> Callable[[Smoke], dict]:
    def run(s: Smoke) -> dict:
        base = [a for a in s.base() if not a.startswith(("run.", "train.epochs", "train.max_steps"))]
        proc = s.trainlab("bench", what, *base, *flags, "--json")
        return {"result": json.loads(proc.stdout), "wall_s": proc.seconds}

    return run


def cases() -> list[Case]:
    """Cheapest and most important first: the budget cuts from the end."""
    gpu = "needs a GPU"
    out = [
        Case("env", case_env, 60),
        Case("train-32-nchw-a1", train_case("32", False, 1), 120),
        Case("train-32-nchw-a2", train_case("32", False, 2), 120),
        Case("train-bf16-cl-a1", train_case("bf16", True, 1), 120),
        Case("train-bf16-nchw-a1", train_case("bf16", False, 1), 120),
        Case("train-32-cl-a1", train_case("32", True, 1), 120),
        Case(
            "train-fp16-cl-a1",
            train_case("fp16", True, 1),
            120,
            on_cpu=False,
            why_not_cpu="fp16 autocast is GPU-only",
        ),
        Case(
            "train-fp16-nchw-a1",
            train_case("fp16", False, 1),
            120,
            on_cpu=False,
            why_not_cpu="fp16 autocast is GPU-only",
        ),
        Case("nonfinite-stop", case_nonfinite_stop, 120),
        Case("sigterm-resume", case_sigterm_resume, 240),
        Case("eval", case_eval, 90),
        Case("loader-tensor", loader_case("tensor"), 120),
        Case("loader-torch", loader_case("torch"), 120),
        Case("ema", case_ema, 150),
        Case("mixup", case_mixup, 120),
        Case("batch-auto", case_batch_auto, 180),
        Case("syncs", case_syncs, 180),
        Case("time-split", case_time_split, 180),
        Case("bench-loader", bench_case("loader", "--workers", "0,2", "--batches", "10"), 120),
        Case("bench-step", bench_case("step", "--steps", "10"), 120),
        Case("bench-batch", bench_case("batch"), 180, on_cpu=False, why_not_cpu=gpu),
    ]
    compile_why = "torch.compile on a 2-core CPU takes minutes; --smoke-compile runs compile-default-a2"
    for accum in (2, 1):  # accumulation (the predicted CUDA-graph defect) first
        for mode in ("reduce-overhead", "default", "max-autotune"):
            out.append(Case(f"compile-{mode}-a{accum}", compile_case(mode, accum), 240, on_cpu=False,
                            why_not_cpu=compile_why))  # fmt: skip
    return out


# ---------------------------------------------------------------- driver


class Report:
    """smoke.json (rewritten atomically after every case) and smoke.log (appended, flushed)."""

    def __init__(self, out: Path, header: dict) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.log_path = out / "smoke.json", out / "smoke.log"
        self.data: dict[str, Any] = {**header, "cases": []}
        self.log_path.write_text("")
        self.write()

    def log(self, line: str) -> None:
        stamped = f"{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S} {line}"
        print(stamped, flush=True)
        with open(self.log_path, "a") as f:
            f.write(stamped + "\n")

    def add(self, record: dict) -> None:
        self.data["cases"].append(record)
        counts: dict[str, int] = {}
        for case in self.data["cases"]:
            counts[case["status"]] = counts.get(case["status"], 0) + 1
        self.data["counts"] = counts
        self.write()

    def write(self) -> None:
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.json_path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="GPU smoke of trainlab's CUDA paths (issue 14)")
    parser.add_argument("--out", type=Path, required=True, help="smoke.json and smoke.log go here")
    parser.add_argument(
        "--work", type=Path, default=None, help="run dirs (default: a temp dir, removed after)"
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip the remaining cases after this")
    parser.add_argument("--smoke", action="store_true", help="the CPU subset, tiny: checks the script itself")
    parser.add_argument("--smoke-compile", action="store_true", help="with --smoke: also compile-default-a2")
    parser.add_argument("--only", default="", help="comma-separated case names (prefixes) to run")
    parser.add_argument("--skip", default="", help="comma-separated case names (prefixes) to leave out")
    args = parser.parse_args(argv)

    if not args.smoke and not torch.cuda.is_available():
        print("bench/gpu_smoke.py needs a CUDA GPU (use --smoke for the CPU subset)", file=sys.stderr)
        return 2
    only = [p for p in args.only.split(",") if p]
    skip = [p for p in args.skip.split(",") if p]
    header = {"command": " ".join(["python bench/gpu_smoke.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "smoke": args.smoke, "budget_s": args.budget_s, "torch": torch.__version__}  # fmt: skip
    report = Report(args.out, header)
    scratch = None if args.work else tempfile.TemporaryDirectory(prefix="gpu_smoke_")
    work = args.work or Path(scratch.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    s = Smoke(out=args.out, work=work, smoke=args.smoke, budget_s=args.budget_s)
    signal.signal(signal.SIGTERM, _on_sigterm)
    failed = 0
    try:
        for case in cases():
            record: dict[str, Any] = {"name": case.name}
            wanted_on_cpu = case.on_cpu or (args.smoke_compile and case.name == "compile-default-a2")
            if only and not any(case.name.startswith(p) for p in only):
                continue
            if any(case.name.startswith(p) for p in skip):
                record.update(status="skipped", reason="--skip")
            elif args.smoke and not wanted_on_cpu:
                record.update(status="skipped", reason=f"--smoke: {case.why_not_cpu}")
            elif s.left_s() <= 5:
                record.update(status="skipped", reason=f"budget of {args.budget_s:.0f} s spent")
            else:
                # A case may run past the budget by at most 15 s (so its processes are not killed at once).
                s.deadline = time.perf_counter() + min(case.timeout_s, s.left_s() + 15)
                report.log(f"[{case.name}] start ({s.left_s():.0f} s of budget left)")
                started = time.perf_counter()
                try:
                    record.update(status="ok", figures=case.run(s))
                except Terminated:
                    record.update(status="killed", error="this script got SIGTERM during the case")
                    record["duration_s"] = round(time.perf_counter() - started, 2)
                    report.add(record)
                    report.log(f"[{case.name}] killed: SIGTERM; stopping")
                    return 1
                except CaseTimeout as exc:
                    record.update(status="timeout", error=str(exc), tail=exc.tail)
                except CaseFailed as exc:
                    record.update(status="failed", error=str(exc), tail=exc.tail)
                except Exception as exc:  # the script's own bug or an unexpected file: keep going
                    record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                                  tail=traceback.format_exc()[-3000:])  # fmt: skip
                record["duration_s"] = round(time.perf_counter() - started, 2)
            failed += record["status"] in ("failed", "timeout")
            report.add(record)
            line = f"[{case.name}] {record['status']}"
            if "duration_s" in record:
                line += f" in {record['duration_s']:.1f} s"
            if record.get("error") or record.get("reason"):
                line += f": {record.get('error') or record.get('reason')}"
            report.log(line)
            if record.get("tail"):
                report.log("    " + record["tail"].replace("\n", "\n    "))
        report.data["elapsed_s"] = round(time.perf_counter() - s.started, 1)
        report.write()
        report.log(f"done in {report.data['elapsed_s']} s: {report.data.get('counts')}")
    finally:
        if scratch is not None:
            scratch.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
