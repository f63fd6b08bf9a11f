"""Config values that passed validation and then crashed mid-run (issue 24, item 10), and a fuzz of every
schema key: whatever a person types, validation says one line (ConfigError, exit 2) or gives a config that
saves and loads back; never a traceback.

The fuzz calls validation in-process (about 13 ms a case); one subprocess checks the command line's side.
"""

from __future__ import annotations

import random

import pytest
import torch
from omegaconf import OmegaConf

from tests.cli_checks import TINY_RUN, assert_bad_input, run_in_process, run_subprocess, tree
from tests.test_error_matrix import schema_keys
from trainlab import config as config_mod
from trainlab.errors import TrainlabError
from trainlab.watch import Watcher
from trainlab.watch.settings import WatchSettings

# What people type, and what a random edit gives: wrong types, signs, zero, huge, non-finite, lists where a
# number goes and the reverse, interpolations to missing keys, to keys of another type, and half-written ones.
POOL = [
    "nan", "inf", "-inf", "-1", "0", "1", "2.5", "-0.5", "1e300", "-1e300", "1000000000000", "1e-320",
    "99999999999999999999999", "abc", "''", "null", "true", "[]", "[1,2]", "[nan,inf]", "[-1,-1]", "[0.5,1e300]",
    "[[0,8],[0.5,16]]", "[[0,1]]", "{a: 1}", "${nonexistent.key}", "${model.name}", "${optim.lr}",
    "${train.epochs}", "${run.name}", "${oc.env:TRAINLAB_FUZZ_UNSET}", "'${data'", "[wip", "'quoted",
]  # fmt: skip
VALUES_PER_KEY = 2


def _random_number(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return str(rng.randint(-(10**15), 10**15))
    if kind == 1:
        return repr(rng.choice((-1, 1)) * 10 ** rng.uniform(-320, 308))
    return repr(rng.random())


def fuzz_cases() -> list[tuple[str, str]]:
    rng = random.Random(24)
    cases = []
    for key in schema_keys():
        for value in rng.sample(POOL, VALUES_PER_KEY - 1) + [_random_number(rng)]:
            cases.append((key, value))
    return cases


def test_fuzz_every_schema_key_one_line_or_a_config_that_round_trips():
    accepted, refused = 0, 0
    for key, value in fuzz_cases():
        item = f"{key}={value}"
        try:
            cfg = config_mod.load_config(None, [item])
        except TrainlabError as exc:
            assert exc.exit_code == 2 and "\n" not in str(exc) and str(exc), (item, str(exc))
            refused += 1
            continue
        except Exception as exc:  # noqa: BLE001 - what the fuzz is for
            pytest.fail(f"{item}: {type(exc).__name__}: {exc}")
        # what validation accepted is what a run saves (config.yaml, the checkpoint) and loads back
        saved = config_mod.to_dict(cfg)
        assert OmegaConf.to_container(OmegaConf.create(config_mod.to_yaml(cfg))) == saved, item
        assert config_mod.to_dict(config_mod.from_dict(saved)) == saved, item
        accepted += 1
    assert refused > 3 * accepted > 0  # the pool is mostly bad: the fuzz really reaches the checks


def test_interpolation_to_a_missing_key_is_one_line_from_the_command_line(tmp_path):
    before = tree(tmp_path)
    result = run_subprocess(["train", *TINY_RUN, "optim.lr=${nonexistent.key}"], tmp_path)
    assert_bad_input(result, before, tree(tmp_path), says="optim.lr")
    assert "nonexistent.key" in result.stderr


def test_values_at_the_ends_of_their_ranges_train(tmp_path):
    """The ends of the ranges are values a run can take: the ones that crashed just past them, and the
    windows at their minimum, in one tiny run."""
    edges = [
        "watch.print_every=10000000", "watch.leak_window=2", "watch.leak_min_samples=2", "watch.leak_sample_every=1",
        "watch.divergence_window=4", "watch.spike_window=1", "watch.bottleneck_window=1", "dist.stop_check_every=1",
        "data.img_size=2", "optim.name=adam", "optim.lr=10000", "optim.betas=[0,0.999]", "optim.eps=1",
        "optim.weight_decay=1000", "model.drop_rate=0.999", "train.label_smoothing=0.999",
        "train.seed=9223372036854775807", "sched.div_factor=1e12", "sched.final_div_factor=1e12",
    ]  # fmt: skip
    argv = ["train", *TINY_RUN, *edges, f"run.dir={tmp_path / 'run'}"]
    result = run_in_process(argv, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_watch_keeps_few_device_slots_for_a_long_print_interval():
    """print_every=10**12 asked torch for a 4 TB buffer (10**7: ten million tensor views, 6 GB); the losses of a
    long interval now cycle through at most 1024 device slots, read before reuse, and average exactly."""
    logged: list[dict] = []
    with Watcher(settings=WatchSettings(print_every=10**12), printer=lambda s: None, verbose=False) as watch:
        watch.start_epoch(1)
        for i in range(3):
            watch.step(loss=torch.tensor(float(i)), batch_size=1)
        assert watch._interval._buf is not None and watch._interval._buf.numel() <= 1025  # watch/interval.py
    with Watcher(settings=WatchSettings(print_every=2500), printer=lambda s: None, verbose=False,
                 on_log=logged.append) as watch:  # fmt: skip
        watch.start_epoch(1)
        for i in range(5000):
            watch.step(loss=torch.tensor(float(i)), batch_size=1)
    assert [(r["step"], r["loss"]) for r in logged] == [(2500, 1249.5), (5000, 3749.5)]
