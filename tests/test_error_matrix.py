"""The bad-input matrix (issue 17): every config key and every command, fed what a new user gets wrong.

Generated, not hand-written: the config cases come from the schema (trainlab.config: the dataclasses'
types, CHOICES and RANGES), the option cases from the CLI parser (every option with a type or choices),
and the path cases from the parser's path arguments, each given a role below; a command or path argument
added without a role fails `test_every_path_argument_has_a_role`, so the matrix grows with the CLI.

Each case must exit 2 with one or two lines on stderr, no traceback, and nothing new on disk. The cases run
in-process through `trainlab.cli.main` (milliseconds each); `test_representative_subprocess` repeats one
path case per command in a real `python -m trainlab` process.
"""

from __future__ import annotations

import typing

import pytest

from tests.cli_checks import TINY_RUN, assert_bad_input, run_in_process, tree
from trainlab.config import CHOICES, RANGES, Config

# ------------------------------------------------------------------ config keys, from the schema


def schema_keys() -> dict[str, typing.Any]:
    """Every `section.key` of the config and its declared type."""
    keys = {}
    for name, section in typing.get_type_hints(Config).items():
        for key, kind in typing.get_type_hints(section).items():
            keys[f"{name}.{key}"] = kind
    return keys


def wrong_type_value(kind: typing.Any) -> str:
    """A command-line value the type cannot hold."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind
    origin = typing.get_origin(base)
    if origin is list:
        return "[x,y]" if typing.get_args(base)[0] in (int, float) else "x"
    if base is bool:
        return "maybe"
    if base in (int, float, typing.Any):  # Any: data.batch_size (an int or 'auto')
        return "many"
    if base is str:
        return "[1,2]"
    raise AssertionError(f"no wrong value for type {kind}: teach wrong_type_value about it")


def outside(key: str, kind: typing.Any) -> str:
    """A value just outside the key's range (the lower end: every range here has one)."""
    allowed = RANGES[key]
    is_int = int in (kind, *typing.get_args(kind))
    value = allowed.low if allowed.low_open else allowed.low - 1
    if allowed.low is None:
        value = allowed.high + 1
    return str(int(value)) if is_int else str(float(value))


def config_cases() -> list:
    cases = []
    for key, kind in schema_keys().items():
        cases.append(pytest.param(key, wrong_type_value(kind), id=f"{key}-wrong-type"))
        if key in CHOICES:
            cases.append(pytest.param(key, "no-such-choice", id=f"{key}-not-a-choice"))
        if key in RANGES:
            cases.append(pytest.param(key, outside(key, kind), id=f"{key}-out-of-range"))
    return cases


def test_the_schema_tables_name_real_keys():
    keys = schema_keys()
    assert len(keys) > 90  # the matrix really covers the schema
    assert set(CHOICES) <= set(keys) and set(RANGES) <= set(keys)


@pytest.mark.parametrize("key,value", config_cases())
def test_config_key(tmp_path, key, value):
    argv = ["train", *TINY_RUN, f"{key}={value}"]
    before = tree(tmp_path)
    result = run_in_process(argv, tmp_path)
    assert_bad_input(result, before, tree(tmp_path), says=key)
