"""`trainlab doctor [CONFIG] [key=value ...]`: the doctor's checks on the run a config describes."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainlab.doctor import diagnose
from trainlab.doctor.verdict import exit_code


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
