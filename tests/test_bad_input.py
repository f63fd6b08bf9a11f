"""Issue 17's cases that slipped the one-line promise: run.dir, data.root, and sweep grids."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_checks import TINY_RUN, assert_bad_input, run_in_process, run_subprocess, tree


def check(tmp_path: Path, argv: list[str], says: str, subprocess: bool = False) -> str:
    before = tree(tmp_path)
    result = (run_subprocess if subprocess else run_in_process)(argv, tmp_path)
    assert_bad_input(result, before, tree(tmp_path), says=says)
    return result.stderr


def test_run_dir_is_an_existing_file(tmp_path):
    (tmp_path / "taken").write_text("not a folder\n")
    err = check(tmp_path, ["train", *TINY_RUN, "run.dir=taken"], "is a file", subprocess=True)
    assert "run.dir taken" in err and "choose another run.dir" in err


def test_run_dir_under_a_regular_file_cannot_be_created(tmp_path):
    # chmod does not stop root; a regular file in the path does
    (tmp_path / "taken").write_text("not a folder\n")
    err = check(tmp_path, ["train", *TINY_RUN, "run.dir=taken/run1"], "cannot be created")
    assert "taken is a file" in err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (Linux)")
def test_run_dir_where_nothing_can_be_created(tmp_path):
    # /proc refuses new folders even to root (ENOENT): a parent that cannot hold a run dir
    check(tmp_path, ["train", *TINY_RUN, "run.dir=/proc/trainlab-run"], "cannot be created in /proc")


def test_data_root_that_is_a_file_says_so(tmp_path):
    (tmp_path / "images.zip").write_bytes(b"PK\x03\x04 not a folder")
    for name in ("folder", "packed"):
        err = check(tmp_path, ["train", *TINY_RUN, f"data.name={name}", "data.root=images.zip"], "is a file")
        assert "does not exist" not in err


def test_sweep_grid_item_without_values_names_the_grid_item(tmp_path):
    err = check(tmp_path, ["sweep", "--grid", "optim.lr", "data.train_size=64", "--dir", "sw"], "--grid 'optim.lr'")
    assert "config file not found" not in err


def test_sweep_validates_every_combination_before_launching(tmp_path):
    # the bad key would make every run fail on its own; the sweep must stop before starting any of them
    argv = ["sweep", *TINY_RUN, "--grid", "optim.lrr=0.1,0.2", "train.seed=0,1", "--dir", "sw"]
    err = check(tmp_path, argv, "unknown config key 'optim.lrr'")
    assert "did you mean 'optim.lr'" in err
    assert not (tmp_path / "sw").exists()
