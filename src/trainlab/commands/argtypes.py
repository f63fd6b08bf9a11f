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
