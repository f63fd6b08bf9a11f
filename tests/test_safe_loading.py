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


# ------------------------------------------------------------------ CIFAR python batches (issue 24, item 3)


def _py2_pickle(obj) -> bytes:
    """`obj` as Python 2's cPickle wrote the Toronto CIFAR files (protocol 2): byte strings as BINSTRING, numpy
    arrays through numpy.core.multiarray._reconstruct with their raw bytes as a string."""
    out = bytearray(b"\x80\x02")

    def string(text: bytes) -> None:
        out.extend(b"U" + bytes([len(text)]) + text if len(text) < 256 else b"T" + len(text).to_bytes(4, "little") + text)

    def dump(value) -> None:
        if isinstance(value, dict):
            out.extend(b"}(")
            for key, item in value.items():
                dump(key)
                dump(item)
            out.extend(b"u")
        elif isinstance(value, list):
            out.extend(b"](")
            for item in value:
                dump(item)
            out.extend(b"e")
        elif isinstance(value, str):
            string(value.encode("latin1"))
        elif isinstance(value, int):
            out.extend(b"J" + value.to_bytes(4, "little", signed=True))
        elif isinstance(value, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87R")
            out.extend(b"(K\x01")  # BUILD state: (version, shape, dtype, fortran, data)
            for n in value.shape:
                out.extend(b"J" + n.to_bytes(4, "little"))
            out.extend({1: b"\x85", 2: b"\x86"}[value.ndim])
            out.extend(b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            out.extend(b"\x89")  # NEWFALSE: C order
            string(value.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(value))

    dump(obj)
    return bytes(out + b".")


def _cifar10(root: Path, write) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        entry = {"batch_label": name, "labels": rng.integers(0, 10, 4).tolist(), "filenames": ["a.png"] * 4,
                 "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8)}  # fmt: skip
        (folder / name).write_bytes(write(entry))
    (folder / "batches.meta").write_bytes(write({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}))
    return folder


def test_cifar_batches_never_run_code_and_real_formats_still_load(tmp_path, capsys):
    import pickle

    from trainlab.data.cifar import load_cifar

    # the Toronto files as Python 2 wrote them, and copies re-pickled by Python 3 at protocols 2, 4 and 5
    writers = {"py2": _py2_pickle, **{f"p{p}": lambda e, p=p: pickle.dumps(e, protocol=p) for p in (2, 4, 5)}}
    loaded = {}
    for name, write in writers.items():
        arrays = load_cifar(_cifar10(tmp_path / name, write), "cifar10")
        loaded[name] = (arrays.train_images, arrays.train_labels, arrays.val_images, arrays.classes)
        assert arrays.train_images.shape == (20, 32, 32, 3) and arrays.classes[9] == "c9"
    for name in writers:  # every format reads back the same arrays
        assert all(np.array_equal(a, b) for a, b in zip(loaded[name][:3], loaded["py2"][:3]))

    marker = tmp_path / "pwned"
    folder = _cifar10(tmp_path / "evil", lambda e: pickle.dumps(e, protocol=2))
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}, protocol=2))
    run_args = ["train", *TINY, "train.epochs=1", "data.name=cifar10", f"data.root={tmp_path / 'evil'}",
                f"run.dir={tmp_path / 'run'}"]  # fmt: skip
    code = main(run_args)
    err = capsys.readouterr().err
    assert not marker.exists(), "reading the CIFAR folder ran the file's code"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "data_batch_3 holds io.open" in lines[0] and "could run code" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
