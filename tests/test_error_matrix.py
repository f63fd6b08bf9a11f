"""The bad-input matrix (issue 17): every config key and every command, fed what a new user gets wrong.

Generated, not hand-written: the config cases come from the schema (trainlab.config: the dataclasses'
types, CHOICES and RANGES), the option cases from the CLI parser (every option with a type or choices),
and the path cases from the parser's path arguments, each given a role below; a command or path argument
added without a role fails `test_every_path_argument_has_a_role`, so the matrix grows with the CLI.

Each case must exit 2 with one or two lines on stderr, no traceback, and nothing new on disk. The cases run
in-process through `trainlab.commands.cli.main` (milliseconds each); `test_representative_subprocess` repeats one
path case per command in a real `python -m trainlab` process.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_checks import TINY_RUN, assert_bad_input, run_in_process, run_subprocess, tree
from trainlab.commands import cli
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
    if origin is dict:  # model.kwargs, data.kwargs, train.loss_kwargs: a mapping
        return "x"
    if base is bool:
        return "maybe"
    if base in (int, float, typing.Any):  # Any: data.batch_size (an int or 'auto')
        return "many"
    if base is str:
        return "[1,2]"
    raise AssertionError(f"no wrong value for type {kind}: teach wrong_type_value about it")


def _is_list(kind: typing.Any) -> bool:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return typing.get_origin(kind) is list or any(typing.get_origin(a) is list for a in args)


def _is_int(kind: typing.Any) -> bool:
    """int keys, lists of ints, and the Any keys (data.img_size, data.batch_size: ints or a word/schedule)."""
    if kind is typing.Any:
        return True
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return int in (kind, *args) or any(int in typing.get_args(a) for a in args if typing.get_origin(a) is list)


def is_numeric(kind: typing.Any) -> bool:
    """Keys that hold numbers: int, float, null or one of them, lists of them, and the Any keys (sizes)."""
    if kind is typing.Any:
        return True
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    parts = [*args, *(x for a in args for x in typing.get_args(a))] if args else [kind]
    return any(p in (int, float) for p in parts)


def outside(key: str, kind: typing.Any, above: bool = False) -> str:
    """A value just outside the key's range: below its low end, or with `above` past its high end. A list key
    gets a list of two such values (every element is range-checked)."""
    allowed = RANGES[key]
    if above:
        value = allowed.high if allowed.high_open else allowed.high + (1 if _is_int(kind) else allowed.high * 1e-3)
    else:
        value = allowed.low if allowed.low_open else allowed.low - (1 if _is_int(kind) else 1e-3 * max(1, abs(allowed.low)))
    text = str(int(value)) if _is_int(kind) else repr(float(value))
    return f"[{text},{text}]" if _is_list(kind) else text


def config_cases() -> list:
    cases = []
    for key, kind in schema_keys().items():
        cases.append(pytest.param(key, wrong_type_value(kind), id=f"{key}-wrong-type"))
        if key in CHOICES:
            cases.append(pytest.param(key, "no-such-choice", id=f"{key}-not-a-choice"))
        if key in RANGES:
            cases.append(pytest.param(key, outside(key, kind), id=f"{key}-below-range"))
            if RANGES[key].high is not None:
                cases.append(pytest.param(key, outside(key, kind, above=True), id=f"{key}-above-range"))
    return cases


def test_every_numeric_key_has_a_range():
    """Issue 24 item 10: a number key without a range took -1, 0, NaN or 1e12 and crashed mid-run (a deque of
    maxlen -1, a 4 TB buffer) or meant nothing. Every one has its range now, and every range both ends."""
    numeric = {key for key, kind in schema_keys().items() if is_numeric(kind)}
    assert {"watch.leak_window", "optim.betas", "data.img_size", "model.drop_rate"} <= numeric
    missing = sorted(numeric - set(RANGES))
    assert not missing, f"give these number keys a range in trainlab.config.RANGES: {missing}"
    unbounded = sorted(k for k, r in RANGES.items() if r.low is None or r.high is None)
    assert not unbounded, f"give these ranges both ends (huge values crash or allocate): {unbounded}"


def test_the_schema_tables_name_real_keys():
    keys = schema_keys()
    assert len(keys) > 90  # the matrix really covers the schema
    assert set(CHOICES) <= set(keys) and set(RANGES) <= set(keys)


@pytest.fixture(scope="module")
def config_cwd(tmp_path_factory) -> Path:
    """One working folder for every config case: each refuses before writing, and sharing it halves the
    cases' cost (pytest's per-test tmp_path was most of it)."""
    return tmp_path_factory.mktemp("config-cases")


@pytest.mark.parametrize("key,value", config_cases())
def test_config_key(config_cwd, key, value):
    argv = ["train", *TINY_RUN, f"{key}={value}"]
    before = tree(config_cwd)
    result = run_in_process(argv, config_cwd)
    assert_bad_input(result, before, tree(config_cwd), says=key)


# ------------------------------------------------------------------ typed options, from the CLI parser


def option_cases() -> list:
    """Every option with a type (int, a positive int...) gets a word, and 0 when the type is a positive int;
    every option with choices, a non-choice."""
    cases = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, [*words, sub_name])
            elif action.option_strings and action.nargs != 0 and (action.type or action.choices):
                option = action.option_strings[-1]
                bad = "many" if action.type else "no-such-choice"
                cases.append(pytest.param([*words, option, bad], option, id=f"{' '.join(words)} {option}"))
                if getattr(action.type, "__name__", "").lstrip("_") == "positive_int":  # a bounded type
                    cases.append(pytest.param([*words, option, "0"], option, id=f"{' '.join(words)} {option} 0"))

    walk(cli.build_parser(), [])
    return cases


@pytest.mark.parametrize("argv,option", option_cases())
def test_typed_option(tmp_path, argv, option):
    before = tree(tmp_path)
    result = run_in_process(argv, tmp_path)
    assert_bad_input(result, before, tree(tmp_path), says=f"argument {option}")


# ------------------------------------------------------------------ paths, from the CLI parser


def random_bytes(path: Path, n: int = 700) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(len(str(path))).bytes(n))
    return path


def image_folder(root: Path) -> Path:
    """A real (tiny) folder dataset: 2 classes, 2 train and 1 val PNG each."""
    for split, count in (("train", 2), ("val", 1)):
        for c, name in enumerate(("circle", "square")):
            for i in range(count):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (40 * c, 80 + i, 20)).save(root / split / name / f"{i}.png")
    return root


def run_dir(root: Path) -> Path:
    from tests.report_fixtures import make_run

    return make_run(root, epochs=1, planned=1, steps_per_epoch=2)


# Bad values of each role of path, by case name: each builds what it needs under tmp and returns the path.
INPUT_FILE = {
    "missing": lambda tmp, ext: tmp / f"missing{ext}",
    "a-folder": lambda tmp, ext: (tmp / f"folder{ext}").mkdir() or tmp / f"folder{ext}",
    "random-bytes": lambda tmp, ext: random_bytes(tmp / f"garbage{ext}"),
}
INPUT_FOLDER = {
    "missing": lambda tmp, fill: tmp / "missing-dir",
    "a-file": lambda tmp, fill: random_bytes(tmp / "a-file"),
    "empty-folder": lambda tmp, fill: (tmp / "empty").mkdir() or tmp / "empty",
    "random-bytes-inside": lambda tmp, fill: fill(tmp / "garbage-dir"),
}
OUTPUT_DIR = {
    "a-file": lambda tmp: random_bytes(tmp / "taken"),
    "under-a-file": lambda tmp: random_bytes(tmp / "taken") / "sub",  # chmod does not stop root; this does
    "in-proc": lambda tmp: Path("/proc/trainlab-matrix/out"),  # /proc refuses new entries even to root
}
OUTPUT_FILE = {
    "a-folder": lambda tmp: (tmp / "out.html").mkdir() or tmp / "out.html",
    "under-a-file": lambda tmp: random_bytes(tmp / "taken") / "out.html",
    "in-proc": lambda tmp: Path("/proc/trainlab-matrix.html"),
}


def garbage_images(root: Path) -> Path:
    for split in ("train", "val"):
        random_bytes(root / split / "circle" / "0.png")
    return root


def garbage_packed(root: Path) -> Path:
    for name in ("meta.json", "train_images.npy", "train_labels.npy", "val_images.npy", "val_labels.npy"):
        random_bytes(root / name)
    return root


def garbage_cifar(root: Path) -> Path:  # pickles of random bytes
    for name in ("batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch"):  # fmt: skip
        random_bytes(root / "cifar-10-batches-py" / name)
    return root


def garbage_run(root: Path) -> Path:
    for name in ("summary.json", "metrics.csv", "config.yaml", "steps.jsonl", "events.jsonl"):
        random_bytes(root / name)
    return root


# Every path argument of every command (parser dest, or config key for train), the role of its path, and
# the argv around it. `{P}` is the bad path; `{DS}`, `{RUN}` a good dataset and run dir when another
# argument needs one.
TRAIN = ["train", *TINY_RUN]
DS_ARGS = ["--workers", "1"]
PATH_ARGS = {
    ("train", "items"): ("yaml", ["train", "{P}", *TINY_RUN[1:]]),
    ("train", "data.root=folder"): (garbage_images, [*TRAIN, "data.name=folder", "data.root={P}"]),
    ("train", "data.root=packed"): (garbage_packed, [*TRAIN, "data.name=packed", "data.root={P}"]),
    ("train", "data.root=cifar10"): (garbage_cifar, [*TRAIN, "data.name=cifar10", "data.root={P}"]),
    ("train", "run.dir"): ("out-dir", [*TRAIN, "run.dir={P}"]),
    ("train", "run.resume"): (".pt", [*TRAIN, "run.resume={P}"]),
    ("train", "model.pretrained"): (".pt", [*TRAIN, "model.pretrained={P}"]),
    ("eval", "checkpoint"): (".pt", ["eval", "{P}"]),
    ("eval", "weights"): (".pt", ["eval", "--model", "resnet8", "--weights", "{P}", *TINY_RUN[1:]]),
    ("data pack", "src"): (garbage_images, ["data", "pack", "{P}", "packed", "--img-size", "8", *DS_ARGS]),
    ("data pack", "dst"): ("out-dir", ["data", "pack", "{DS}", "{P}", "--img-size", "8", *DS_ARGS]),
    ("data subset", "src"): (garbage_images, ["data", "subset", "{P}", "sub", "--classes", "1",
                                              "--train-per-class", "1", "--val-per-class", "1", "--link", "copy"]),
    ("data subset", "dst"): ("out-dir", ["data", "subset", "{DS}", "{P}", "--classes", "1", "--train-per-class",
                                         "1", "--val-per-class", "1", "--link", "copy"]),
    ("data info", "root"): (garbage_packed, ["data", "info", "{P}", *DS_ARGS]),
    ("data check", "root"): (garbage_packed, ["data", "check", "{P}", *DS_ARGS]),
    ("data stats", "root"): (garbage_images, ["data", "stats", "{P}", *DS_ARGS]),
    ("bench loader", "items"): ("yaml", ["bench", "loader", "{P}", *TINY_RUN, "--batches", "1"]),
    ("bench step", "items"): ("yaml", ["bench", "step", "{P}", *TINY_RUN, "--steps", "1"]),
    ("bench batch", "items"): ("yaml", ["bench", "batch", "{P}", *TINY_RUN]),
    ("sweep", "items"): ("yaml", ["sweep", "{P}", *TINY_RUN, "--grid", "train.seed=0,1", "--dir", "sw"]),
    ("sweep", "dir"): ("out-dir", ["sweep", *TINY_RUN, "--grid", "train.seed=0,1", "--dir", "{P}"]),
    ("report", "run_dirs"): (garbage_run, ["report", "{P}", "-o", "report.html"]),
    ("report", "output"): ("out-file", ["report", "{RUN}", "-o", "{P}"]),
    ("runs", "dir"): (garbage_run, ["runs", "{P}"]),
    ("doctor", "items"): ("yaml", ["doctor", "{P}", *TINY_RUN]),
    ("doctor", "out"): ("out-dir", ["doctor", *TINY_RUN, "--out", "{P}"]),
}  # fmt: skip

# Value arguments that are not paths.
NOT_PATHS = {
    ("train", "rdzv_endpoint"), ("inspect", "model"), ("sweep", "grid"), ("data subset", "class_names"),
    ("eval", "overrides"), ("bench loader", "workers"), ("eval", "model"),
    # the search's words: a column, a space, names, an Optuna storage URL and a Ray/SLURM address or option
    ("sweep", "objective"), ("sweep", "space"), ("sweep", "study"), ("sweep", "storage"), ("sweep", "ray_address"),
    ("sweep", "slurm_option"), ("sweep", "slurm_partition"), ("sweep", "slurm_time"),
}  # fmt: skip

# Cases whose outcome is the command's job, not bad input (asserted by the commands' own tests).
NOT_ERRORS = {
    ("runs", "dir", "empty-folder"): "an empty runs folder lists no runs (exit 0)",
    ("runs", "dir", "random-bytes-inside"): "unreadable runs are listed with what can be read (exit 0)",
    ("data info", "root", "random-bytes-inside"): "reporting unreadable files is what info does (exit 0)",
    ("data check", "root", "random-bytes-inside"): "check lists unreadable data and exits 2 by design",
    ("data subset", "src", "random-bytes-inside"): "subset copies files without decoding them (exit 0)",
}


def parser_value_arguments() -> set[tuple[str, str]]:
    """(command, dest) of every argument that takes a free-form string (no type, no choices) in the CLI."""
    found = set()

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}".strip())
            elif action.nargs != 0 and action.type is None and action.choices is None and action.dest != "help":
                found.add((name, action.dest))

    walk(cli.build_parser(), "")
    return found


def test_every_path_argument_has_a_role():
    args = parser_value_arguments()
    assert ("eval", "checkpoint") in args and ("data pack", "dst") in args  # the walk sees the commands
    missing = args - {(c, d) for c, d in PATH_ARGS} - NOT_PATHS
    assert not missing, f"give these arguments a role in PATH_ARGS (or list them in NOT_PATHS): {sorted(missing)}"


def path_cases() -> list:
    cases = []
    for (command, dest), (role, _) in PATH_ARGS.items():
        table = (OUTPUT_DIR if role == "out-dir" else OUTPUT_FILE if role == "out-file"
                 else INPUT_FILE if isinstance(role, str) else INPUT_FOLDER)  # fmt: skip
        for case in table:
            why = NOT_ERRORS.get((command, dest, case))
            marks = [pytest.mark.skip(reason=why)] if why else []
            cases.append(pytest.param(command, dest, case, id=f"{command}-{dest}-{case}".replace(" ", "-"),
                                      marks=marks))  # fmt: skip
    return cases


def build_case(tmp: Path, command: str, dest: str, case: str) -> list[str]:
    role, template = PATH_ARGS[(command, dest)]
    if role == "out-dir":
        bad = OUTPUT_DIR[case](tmp)
    elif role == "out-file":
        bad = OUTPUT_FILE[case](tmp)
    elif isinstance(role, str):
        bad = INPUT_FILE[case](tmp, ".yaml" if role == "yaml" else role)
    else:
        bad = INPUT_FOLDER[case](tmp, role)
    if "/proc/" in str(bad) and not Path("/proc/self").is_dir():
        pytest.skip("needs /proc (Linux)")
    values = {"{P}": str(bad)}
    if any("{DS}" in a for a in template):
        values["{DS}"] = str(image_folder(tmp / "dataset"))
    if any("{RUN}" in a for a in template):
        values["{RUN}"] = str(run_dir(tmp / "runs" / "good"))
    argv = []
    for arg in template:
        for key, value in values.items():
            arg = arg.replace(key, value)
        argv.append(arg)
    return argv


@pytest.mark.parametrize("command,dest,case", path_cases())
def test_path(tmp_path, command, dest, case):
    argv = build_case(tmp_path, command, dest, case)
    before = tree(tmp_path)
    result = run_in_process(argv, tmp_path)
    assert_bad_input(result, before, tree(tmp_path))


# One path case per command family in a real process (train's is in test_bad_input.py): the console entry
# point, exit status and stderr as a shell sees them. Each costs a Python start and, for most, a torch import.
REPRESENTATIVE = [
    ("eval", "checkpoint", "random-bytes"),
    ("sweep", "dir", "a-file"), ("report", "run_dirs", "missing"),
]  # fmt: skip


@pytest.mark.parametrize("command,dest,case", REPRESENTATIVE, ids=["-".join(c).replace(" ", "-") for c in REPRESENTATIVE])
def test_representative_subprocess(tmp_path, command, dest, case):
    argv = build_case(tmp_path, command, dest, case)
    before = tree(tmp_path)
    result = run_subprocess(argv, tmp_path)
    assert_bad_input(result, before, tree(tmp_path))
