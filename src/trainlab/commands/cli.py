"""`trainlab` command line: parse argv, call the library, map errors to one line and an exit code.

Exit codes: 0 done; 2 bad input (config, data, arguments); 143 stopped by a signal after a resumable
checkpoint; 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from trainlab.commands.argtypes import node_count
from trainlab.errors import TrainlabError, UsageError

_OVERRIDE = re.compile(r"^[A-Za-z_]\w*\.[\w.]+=")  # section.key=value, as `trainlab eval` takes after a CHECKPOINT
_PACKAGE = Path(__file__).resolve().parents[1]  # src/trainlab: whose UserWarnings are shown as one line

# Subcommands registered by their own module's `register_cli(subparsers)`. Only the module of the command
# being run is imported, so `trainlab train` does not pay for matplotlib and friends.
REGISTRARS = {
    "inspect": "trainlab.commands.inspect",
    "data": "trainlab.commands.data",
    "bench": "trainlab.commands.bench",
    "sweep": "trainlab.commands.sweep",
    "report": "trainlab.commands.report",
    "runs": "trainlab.commands.report",
    "doctor": "trainlab.commands.doctor",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints usage and exits 2; keep it one line
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def cmd_train(args: argparse.Namespace) -> int:
    from trainlab.config import load_config, split_config_and_overrides

    # The config first: a bad one is refused before torch is imported (a second, not several).
    config_path, overrides = split_config_and_overrides(args.items)
    cfg = load_config(config_path, overrides)

    from trainlab import distributed
    from trainlab.commands.fit import IgnoreStopsWhenFinished, train_config

    _, max_nodes = distributed.parse_nnodes(args.nnodes)
    if (cfg.train.nproc > 1 or max_nodes > 1) and "LOCAL_RANK" not in os.environ:
        # Re-launch through torch's own launcher; each worker runs this command with nproc left to torchrun.
        argv = [a for a in args.items if not a.startswith("train.nproc=")]
        return distributed.launch(argv, nproc=cfg.train.nproc, nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint,
                                  max_restarts=cfg.train.max_restarts, record_dir=_local_run_dir(cfg))
    train_config(cfg, extra=(IgnoreStopsWhenFinished(),))
    return 0


def _local_run_dir(cfg) -> Optional[str]:
    """The folder the run's files are in on this machine (the cache of an object-store run dir), when fixed."""
    from trainlab.state import remote

    if not cfg.run.dir:
        return None
    if remote.is_url(cfg.run.dir):
        return str(cfg.run.cache_dir or remote.default_cache_dir(cfg.run.dir))
    return str(cfg.run.dir)


# What gloo says when the other end of a connection is gone; raised as a plain RuntimeError from DDP's
# all-reduce inside backward(), not as torch.distributed.DistError.
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "/gloo/transport/")


def _lost_peer(exc: BaseException) -> Optional[str]:
    """A collective that failed because another rank of the job is gone (a torch.distributed.DistError, or
    gloo's 'Connection reset by peer'), as one short line; None for anything else (a real bug keeps its
    traceback). Only in a process of a multi-process job."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return None
    distributed = sys.modules.get("torch.distributed")
    dist_error = getattr(distributed, "DistError", None) if distributed is not None else None
    text = str(exc).strip()
    if not ((dist_error is not None and isinstance(exc, dist_error))
            or (isinstance(exc, RuntimeError) and any(mark in text for mark in _PEER_GONE))):  # fmt: skip
        return None
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:240]


def _one_line_warnings(previous):  # noqa: ANN001, ANN202 - warnings.showwarning's signature
    """warnings.showwarning that prints trainlab's own warnings as one line (data.skip_bad_images' count...),
    not Python's two with a path; every other warning goes where it went before."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if category is UserWarning and Path(filename).resolve().is_relative_to(_PACKAGE):
            (file or sys.stderr).write(f"WARNING: {message}\n")
        else:
            previous(message, category, filename, lineno, file, line)

    return show


def cmd_eval(args: argparse.Namespace) -> int:
    from trainlab.commands.evaluate import evaluate_checkpoint, evaluate_weights

    items = [args.checkpoint, *args.overrides] if args.checkpoint else list(args.overrides)
    # A best file's name has '=' in it (epoch=03-val_acc1=25.00.pt): the first item is an override only when
    # it reads section.key=value and is no file
    checkpoint = items[0] if items and not (_OVERRIDE.match(items[0]) and not Path(items[0]).is_file()) else None
    overrides = items[1:] if checkpoint else items
    if args.model or args.weights:
        if checkpoint or not (args.model and args.weights):
            raise UsageError("trainlab eval: give a CHECKPOINT, or --model NAME with --weights FILE (not both)")
        result = evaluate_weights(args.model, args.weights, overrides)
    elif checkpoint is None:
        raise UsageError("trainlab eval: give a CHECKPOINT (a run's checkpoints/*.pt) or --model NAME --weights FILE")
    else:
        result = evaluate_checkpoint(checkpoint, overrides, weights=args.which)
    if args.json:
        import json

        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['checkpoint']}: val loss {result['val_loss']:.4f} | top-1 {result['val_acc1']:.2f}% | "
            f"top-5 {result['val_acc5']:.2f}% ({result['val_samples']} images, {result['weights']} weights"
            + (f": {result['weights_chosen_by']})" if result.get("weights_chosen_by") else ")")
        )
    return 0


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="trainlab", description="Train image classifiers and see what the run is doing.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model: trainlab train [CONFIG] [key=value ...]")
    p.add_argument("items", nargs="*", metavar="CONFIG|key=value", help="a YAML config, then overrides")
    p.add_argument("--nnodes", type=node_count, default="1", metavar="N|MIN:MAX",
                   help="with train.nproc>1: number of machines, or MIN:MAX for an elastic job (torchrun --nnodes)")
    p.add_argument("--rdzv-endpoint", default=None, help="with train.nproc>1 on several machines: HOST:PORT")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint (or a model with plain weights) on the val split")
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", help="a trainlab checkpoint (.pt)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ema", dest="which", action="store_const", const="ema", default="auto",
                       help="score the EMA weights (default: the weights that won the checkpoint's epoch)")
    which.add_argument("--raw", dest="which", action="store_const", const="raw",
                       help="score the raw (trained) weights, also where the EMA's won")
    p.add_argument("--model", help="instead of a checkpoint: a model name or import path pkg.mod:factory ...")
    p.add_argument("--weights", help="... and a plain state_dict file for it (loaded weights-only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    wanted = [REGISTRARS[command]] if command in REGISTRARS else ([] if command else REGISTRARS.values())
    for module_name in dict.fromkeys(wanted):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            if os.environ.get("TRAINLAB_DEBUG"):
                raise
            continue
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warnings(shown)
    try:
        return _main(argv)
    finally:
        warnings.showwarning = shown


def _main(argv: list[str]) -> int:
    try:
        command = next((a for a in argv if not a.startswith("-")), None)
        parser = build_parser(command)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2 if argv else 0
        return int(args.func(args) or 0)
    except TrainlabError as exc:
        rank = os.environ.get("RANK", "0")
        if exc.exit_code == 143:  # a stop says the same on every rank of a torchrun job: rank 0 says it
            if rank == "0":
                print(f"trainlab: {exc}", file=sys.stderr)
        else:  # errors may differ between ranks: each says which it is
            where = f" (rank {rank})" if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else ""
            print(f"trainlab: error{where}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("trainlab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        lost = _lost_peer(exc)
        if lost is None or os.environ.get("TRAINLAB_DEBUG"):
            raise
        # Another rank died (its own line, or the launcher's, says how); the traceback here says nothing more.
        rank = os.environ.get("RANK", "0")
        message = (f"trainlab: error (rank {rank}): a collective with the other ranks failed ({lost}): another rank "
                   "of the job ended first")  # fmt: skip
        print(message, file=sys.stderr)
        from trainlab.distributed import note_lost_peer

        note_lost_peer(message)  # the job's exit code is then the rank's that ended first
        return 1
    except SystemExit as exc:  # --help
        return int(exc.code or 0)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
