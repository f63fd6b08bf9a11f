"""Resuming and evaluating runs whose files a person edited, or whose saved values are awkward (issue 24,
items 7, 8 and 9): one line and exit 2, or the run continues; never a traceback, nothing half-made left.

One tiny real run (module-scoped) gives the checkpoint every test here starts from; each test works on its
own copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli_checks import TINY_RUN, run_in_process, tree

# A run name YAML reads as the start of a list, saved as such in the config and the checkpoint; also the
# prefix of the run dir's name, where glob reads it as a character class.
NAME = "[wip"
RUN = [*TINY_RUN, f"run.name='{NAME}'"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """runs/[wip-<stamp>/ after one finished epoch."""
    cwd = tmp_path_factory.mktemp("edited")
    result = run_in_process(["train", *RUN], cwd)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (cwd / "runs").iterdir()
    assert run_dir.name.startswith(NAME + "-")
    return run_dir


def _copy(run_dir: Path, cwd: Path, status: str = "stopped") -> Path:
    """The run, in cwd/runs/, marked unfinished (as a SIGTERM leaves it) so auto-resume considers it."""
    copy = cwd / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, "status": status}))
    return copy


def _one_line(result, says: str) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    context = f"exit {result.returncode}:\n{result.stderr}\n{result.stdout[-1500:]}"
    assert "Traceback" not in result.stderr and result.returncode == 2 and len(lines) == 1, context
    assert says in lines[0], context
    return lines[0]


def test_auto_resume_reads_a_hand_edited_config_yaml(finished, tmp_path):
    """config.yaml as a list, or with a section replaced by a number: AttributeError, exit 1. Now it tells
    nothing, and the checkpoint decides (this one is finished). A changed value there started a new run
    without a word: now the start line says which run was passed over and why."""
    run_dir = _copy(finished, tmp_path)
    for text in ("- 1\n- 2\n", "model: 5\noptim: [1]\n"):
        (run_dir / "config.yaml").write_text(text)
        result = run_in_process(["train", *RUN], tmp_path)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert f"continuing the unfinished run in {Path('runs') / run_dir.name}" in result.stdout
        assert "is finished (1 epochs)" in result.stdout
    (run_dir / "config.yaml").write_text((finished / "config.yaml").read_text().replace("lr: 0.1", "lr: 0.5"))
    result = run_in_process(["train", *RUN], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (f"starting a new run: the unfinished run in {Path('runs') / run_dir.name} has other settings in "
            "its config.yaml (optim.lr 0.5 there, 0.1 here)") in result.stdout  # fmt: skip
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_eval_of_a_run_whose_saved_strings_yaml_reads_otherwise(finished, capsys):
    """run.name '[wip' is saved in the checkpoint's config; eval rebuilt the config from 'key=value' text,
    where '[wip' is half a list: yaml.parser.ParserError."""
    from trainlab.commands.cli import main

    assert main(["eval", str(finished / "checkpoints" / "last.pt")]) == 0
    out, err = capsys.readouterr()
    assert "top-1" in out and "Traceback" not in err


def test_resume_into_another_model_names_it_first_and_leaves_nothing(finished, tmp_path):
    """run.resume=CKPT with another model: without force the refusal named data.train_size '(and 5 more)';
    with run.resume_force=true, load_state_dict's RuntimeError and a half-made run dir."""
    checkpoint = finished / "checkpoints" / "last.pt"
    before = tree(tmp_path)
    other = [*RUN, "data.train_size=48", "model.name=resnet20", f"run.resume={checkpoint}", "run.dir=new"]
    line = _one_line(run_in_process(["train", *other], tmp_path), "cannot resume: model.name changed")
    assert "from 'resnet8' to 'resnet20'" in line
    for forced in (["model.name=resnet20"], ["model.num_classes=3"]):
        argv = ["train", *RUN, *forced, f"run.resume={checkpoint}", "run.dir=new", "run.resume_force=true"]
        line = _one_line(run_in_process(argv, tmp_path), forced[0].split("=")[0])
        assert "run.resume_force" in line
        assert tree(tmp_path) == before, "a half-made run dir was left behind"


def test_a_resume_with_skipped_images_names_them_not_the_step_cap(tmp_path):
    """Stopped by an undecodable image after periodic checkpoints, resumed with data.skip_bad_images=true: the
    refusal blamed train.max_steps_per_epoch, never changed, after a Python 'UserWarning' line."""
    from tests.test_error_matrix import image_folder

    image_folder(tmp_path / "images")
    (tmp_path / "images" / "train" / "circle" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    argv = ["train", *TINY_RUN, "data.name=folder", f"data.root={tmp_path / 'images'}", "data.img_size=8",
            "data.batch_size=1", "data.loader=torch", "train.epochs=2", "train.seed=3", "run.dir=run",
            "run.checkpoint_every_steps=1"]  # fmt: skip
    first = run_in_process(argv, tmp_path)
    assert first.returncode == 2 and "cannot decode image" in first.stderr, first.stderr
    assert list((tmp_path / "run" / "checkpoints").glob("periodic-*.pt")), "the image came first: pick a seed"
    second = run_in_process([*argv, "data.skip_bad_images=true"], tmp_path)
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert second.returncode == 2 and len(lines) == 2 and "Traceback" not in second.stderr, second.stderr
    assert lines[0].startswith("WARNING: data.skip_bad_images: skipped 1 unreadable image(s)"), lines
    assert "steps per epoch 4 -> 3 (data.skip_bad_images=true left unreadable images out" in lines[1], lines
    assert "max_steps_per_epoch" not in second.stderr
