"""`trainlab inspect MODEL`: the model's numbers (trainlab.models.inspection) as a table or JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from trainlab.commands.argtypes import positive_int
from trainlab.models.inspection import inspect_model


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _run(args: argparse.Namespace) -> int:
    from trainlab.models import available

    if args.list:
        from trainlab.models.timm_family import PREFIX, timm_names

        print("\n".join([*available(), *(PREFIX + n for n in timm_names())]))
        return 0
    if not args.model:
        from trainlab.errors import UsageError

        raise UsageError("trainlab inspect: give a MODEL name (or --list to see them)")
    info = inspect_model(args.model, args.num_classes, args.cifar_stem, args.img_size, args.norm)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{info['name']}  ({info['num_classes']} classes, {info['img_size']} px"
        f"{', CIFAR stem' if info['cifar_stem'] else ''}, norm={info['norm']})"
    )
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("convolution layers", f"{info['conv_layers']}"),
        ("parameters", f"{info['params']:,}"),
        ("trainable parameters", f"{info['trainable_params']:,}"),
        ("parameters with gradients (1 backward)", f"{info['params_with_grad']:,}"),
        ("inputs to the last linear layer", f"{info['last_linear_in_features']}"),
        ("FLOPs per image (forward)", f"{_human(info['flops_per_image'])} ({info['flops_per_image']:,})"),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="count a model's conv layers, parameters, gradients and FLOPs",
        description="Build MODEL, run one forward and backward pass, and report conv layers, parameters, "
        "parameters that receive gradients, the input width of the last linear layer and FLOPs per image.",
    )
    parser.add_argument("model", nargs="?", help="model name, e.g. resnet18, densenet121, resnet20, timm/convnext_atto")
    parser.add_argument("--num-classes", type=positive_int, default=1000, help="classifier outputs (default 1000)")
    parser.add_argument("--cifar-stem", action="store_true", help="3x3 stride-1 stem, no max-pool")
    parser.add_argument(
        "--img-size", type=positive_int, default=None, help="input size (default 32 for CIFAR models, else 224)"
    )
    parser.add_argument("--norm", choices=("batch", "none"), default="batch")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--list", action="store_true", help="list every model name and exit")
    parser.set_defaults(func=_run)
