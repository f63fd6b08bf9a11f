"""Value types for argparse options, shared by every subcommand's parser (argparse names the option)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A count or a size: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def node_count(text: str) -> str:
    """--nnodes: a number of machines, or MIN:MAX for an elastic job (torchrun's own form)."""
    low, _, high = text.partition(":")
    try:
        low_n, high_n = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN:MAX machines, got {text!r}") from None
    if low_n < 1 or high_n < low_n:
        raise argparse.ArgumentTypeError(f"expected 1 or more machines (MIN <= MAX), got {text!r}")
    return text
