"""Nothing trainlab loads from a file may run code: checkpoints and pretrained weights load with
torch.load(weights_only=True); a file that needs a full unpickle is refused (exit 2, one line) unless
the user marks it trusted with run.trust_checkpoint=true.

The attack is real: a pickle whose loading would create a marker file through __reduce__.
"""

from __future__ import annotations

import fractions
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from trainlab.commands.cli import main
from trainlab.models import create
from trainlab.state import checkpoint as ckpt


class _Payload:
    """Unpickling this calls open(marker, 'w'): code from the file, run by the loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _malicious_state(marker: Path) -> dict:
    weights = create("resnet8", 4).state_dict()
    return {"model": weights, "config": {}, "epoch": 0, "global_step": 0, "payload": _Payload(marker)}


def _refused(code: int, err: str, path: Path, marker: Path) -> None:
    assert not marker.exists(), f"loading {path} ran the file's code (exit {code})"
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert str(path) in lines[0] and "run.trust_checkpoint=true" in lines[0], lines[0]
    assert "Traceback" not in err


def test_malicious_files_are_refused_everywhere_and_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    plain = tmp_path / "evil.pt"  # a plain torch.save file, e.g. downloaded
    torch.save(_malicious_state(marker), plain)
    run_args = ["train", *TINY, "train.epochs=1", "data.train_size=32", "data.val_size=16"]

    code = main(["eval", str(plain)])
    _refused(code, capsys.readouterr().err, plain, marker)

    code = main([*run_args, f"run.resume={plain}", f"run.dir={tmp_path / 'resumed'}"])
    _refused(code, capsys.readouterr().err, plain, marker)

    code = main([*run_args, f"model.pretrained={plain}", f"run.dir={tmp_path / 'finetune'}"])
    err = capsys.readouterr().err
    _refused(code, err, plain, marker)
    assert "model.pretrained" in err

    # dressed as the run's own last.pt, checksum trailer and all: auto-resume must not run it either,
    # nor pass it over as "corrupt" and quietly start from scratch
    run_dir = tmp_path / "auto"
    ckpt.save_atomic(_malicious_state(marker), run_dir / "checkpoints" / "last.pt")
    code = main([*run_args, f"run.dir={run_dir}"])
    _refused(code, capsys.readouterr().err, run_dir / "checkpoints" / "last.pt", marker)
    assert not (run_dir / "metrics.csv").exists()


def test_trust_flag_allows_a_full_unpickle_of_a_trusted_file(tmp_path, capsys):
    path = tmp_path / "odd.pt"
    ckpt.save_atomic({"global_step": 3, "ratio": fractions.Fraction(1, 3)}, path)  # not weights-only readable
    with pytest.raises(ckpt.UnsafeCheckpointError, match="fractions.Fraction"):
        ckpt.load_checked(path)
    assert ckpt.load_checked(path, trusted=True)["ratio"] == fractions.Fraction(1, 3)
    # the same flag on the command line: eval reads the file, then finds it is no trainlab checkpoint
    assert main(["eval", str(path)]) == 2
    assert "run.trust_checkpoint=true" in capsys.readouterr().err
    assert main(["eval", str(path), "run.trust_checkpoint=true"]) == 2
    assert "not a trainlab checkpoint" in capsys.readouterr().err


def test_checkpoint_state_is_weights_only_readable_and_rng_round_trips_bitwise(tmp_path):
    random.seed(11)
    np.random.seed(12)
    np.random.randn(1)  # leaves a cached gaussian in numpy's state (has_gauss=1)
    torch.manual_seed(13)
    path = tmp_path / "last.pt"
    ckpt.save_atomic({"rng": ckpt.capture_rng(), "global_step": 1}, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    expected = (random.random(), np.random.randn(5).tolist(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.random(), np.random.rand(7), torch.rand(9)  # move every generator on
    ckpt.restore_rng(torch.load(path, weights_only=True)["rng"])
    assert (random.random(), np.random.randn(5).tolist(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected


def test_checkpoints_from_before_the_change_still_load_without_trust(tmp_path):
    """Old trainlab checkpoints hold numpy's RNG state as an ndarray; they are read without numpy's unpickler."""
    np.random.seed(5)
    np.random.randn(1)
    old_rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    path = tmp_path / "old.pt"
    ckpt.save_atomic({"rng": old_rng, "global_step": 4}, path)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    expected = np.random.randn(4).tolist()
    np.random.rand(3)
    state = ckpt.load_checked(path)
    ckpt.restore_rng(state["rng"])
    assert np.random.randn(4).tolist() == expected and state["global_step"] == 4
