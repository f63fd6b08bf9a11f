"""Checkpoints off the hot path, and how long a preemption notice takes to become exit 143 with the upload
done. Results go to BENCHMARKS.md ("Checkpoints off the training path").

Part 1, the training stall per checkpoint for a ResNet-50-sized state (torchvision resnet50 + SGD momentum
buffers, ~205 MB): `sync` is what the loop paid before (serialise, hash, fsync, rename on the training
thread: save_atomic on the live state); `background` is what it pays now (checkpoint.to_host, then the
write is handed to the BackgroundWriter). Also timed: how long the background write takes to be whole, and
how much a fixed CPU workload on the training thread (matmuls standing in for steps) slows down while the
write runs, against the same workload alone (a ratio in the same round: the machine is shared).

Part 2, notice -> exit 143: a real `trainlab train` with run.dir=s3://... on moto's S3 server (in this
process, on the loopback) and run.preemption_notice=URL on a local HTTP server; the server starts announcing,
the clock runs until the process has exited 143 with its last.pt in the bucket (verified afterwards).

    PYTHONPATH=src python bench/checkpoint_offload.py [--rounds 3] [--model resnet50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainlab.state.background import BackgroundWriter  # noqa: E402
from trainlab.state.checkpoint import HostSnapshot, load_checked, save_atomic  # noqa: E402


def resnet50_state() -> dict:
    model = torchvision.models.resnet50()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()  # creates the momentum buffers
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}


def state_mb(state: dict) -> float:
    total = 0
    for part in (state["model"], state["optimizer"]["state"]):
        for value in part.values():
            for tensor in value.values() if isinstance(value, dict) else [value]:
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
    return total / 2**20


def workload(seconds_hint: int = 12) -> float:
    """A fixed amount of CPU work on this thread (stands in for training steps); returns its wall time."""
    a, b = torch.randn(384, 384), torch.randn(384, 384)
    started = time.perf_counter()
    for _ in range(seconds_hint * 40):
        a = (a @ b).tanh_()
    return time.perf_counter() - started


def part1(rounds: int, folder: Path) -> dict:
    state = resnet50_state()
    print(f"state: {state_mb(state):.0f} MB of tensors (resnet50 + SGD momentum)", flush=True)
    sync_s, stall_s, write_s, alone_s, beside_s, copy_s = [], [], [], [], [], []
    snapshot = HostSnapshot()  # as in the run: host buffers kept from one checkpoint to the next
    started = time.perf_counter()
    snapshot.take(state)
    first_take_s = time.perf_counter() - started  # the run's first checkpoint allocates them
    print(f"first snapshot (allocating the host buffers): {first_take_s * 1000:.0f} ms", flush=True)
    for round_index in range(rounds):
        path = folder / "last.pt"
        started = time.perf_counter()
        save_atomic(state, path)
        sync_s.append(time.perf_counter() - started)

        writer = BackgroundWriter()
        done = {}

        def job(snapshot: dict, path: Path = path, done: dict = done) -> None:
            save_atomic(snapshot, path)
            done["at"] = time.perf_counter()

        started = time.perf_counter()
        taken = snapshot.take(state)
        copy_s.append(time.perf_counter() - started)
        writer.submit(lambda taken=taken: job(taken))
        stall_s.append(time.perf_counter() - started)
        beside = workload()  # the training thread goes on while the file is written
        writer.wait()
        write_s.append(done["at"] - started)
        beside_s.append(beside)
        alone_s.append(workload())
        load_checked(path, require_checksum=True)  # the background file is whole
        print(f"round {round_index + 1}: sync {sync_s[-1]:.2f} s, background stall {stall_s[-1] * 1000:.0f} ms "
              f"(of which the host copy {copy_s[-1] * 1000:.0f} ms) "
              f"(file whole after {write_s[-1]:.2f} s), workload alone {alone_s[-1]:.2f} s / beside the "
              f"write {beside_s[-1]:.2f} s", flush=True)  # fmt: skip
    return {"sync_s": sync_s, "stall_s": stall_s, "write_s": write_s, "alone_s": alone_s, "beside_s": beside_s,
            "first_take_s": [first_take_s], "copy_s": copy_s}


class Notice:
    def __init__(self) -> None:
        self.announce_at: float | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                body = b"terminate" if outer.announce_at is not None else b""
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notice"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def part2(model: str, folder: Path, poll_s: float) -> dict:
    from tests.s3_server import S3Server

    s3 = S3Server()
    s3.start()
    s3.setup_credentials()
    notice = Notice()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINLAB_", "AWS_"))}
    env.update(s3.env, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    args = ["data.name=shapes", "data.train_size=2000", "data.val_size=64", "data.img_size=32", "data.batch_size=8",
            f"model.name={model}", "train.epochs=1", "run.tensorboard=false", "run.progress=none",
            "watch.print_every=1", "train.threads=1", "run.dir=s3://runs/bench/notice",
            f"run.cache_dir={folder / 'cache'}", f"run.preemption_notice={notice.url}",
            f"run.preemption_poll_s={poll_s}"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    steps = folder / "cache" / "steps.jsonl"
    while proc.poll() is None and not (steps.exists() and len(steps.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    notice.announce_at = time.perf_counter()
    announced_wall = time.time()
    out, err = proc.communicate(timeout=900)
    elapsed = time.perf_counter() - notice.announce_at
    exited_wall = time.time()
    events = {e["kind"]: e["time"] for e in map(json.loads, (folder / "cache" / "events.jsonl").read_text().splitlines())}
    fs = s3.filesystem()
    local = folder / "cache" / "checkpoints" / "last.pt"
    info = fs.info("runs/bench/notice/checkpoints/last.pt")
    state = load_checked(local, require_checksum=True)
    s3.stop()
    assert proc.returncode == 143, err[-2000:]
    assert info["size"] == local.stat().st_size
    return {"notice_to_exit_s": elapsed, "exit": proc.returncode, "checkpoint_mb": info["size"] / 2**20,
            "stopped_at_step": state["global_step"], "poll_s": poll_s,
            # announce -> seen by the poller; -> checkpoint written and uploaded (the `preempted` event is
            # logged after the writer is done); -> summary and small files uploaded, process gone
            "until_noticed_s": events["preemption_notice"] - announced_wall,
            "noticed_to_checkpoint_uploaded_s": events["preempted"] - events["preemption_notice"],
            "uploaded_to_exit_s": exited_wall - events["preempted"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--poll-s", type=float, default=5.0)
    parser.add_argument("--skip-notice", action="store_true")
    parser.add_argument("--skip-stall", action="store_true")
    options = parser.parse_args()
    torch.set_num_threads(1)  # one intra-op thread: on a loaded 2-core machine two would wait on each other
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        if not options.skip_stall:
            one = part1(options.rounds, Path(tmp))
            med = {k: statistics.median(v) for k, v in one.items()}
            print(json.dumps({"median": med, "all": one}, indent=1))
            print(f"stall per checkpoint: sync {med['sync_s']:.2f} s, background {med['stall_s'] * 1000:.0f} ms "
                  f"({med['sync_s'] / med['stall_s']:.0f}x less); workload beside the write / alone: "
                  f"{statistics.median(b / a for a, b in zip(one['alone_s'], one['beside_s'])):.2f}x")  # fmt: skip
        if not options.skip_notice:
            two = part2(options.model, Path(tmp), options.poll_s)
            print(json.dumps(two, indent=1))


if __name__ == "__main__":
    main()
