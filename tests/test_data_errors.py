"""Every data error is a one-line DataError/ConfigError that names the file or folder and the fix.

Faults are planted for real: missing folders, empty ones, garbage bytes in a .jpg, a deleted batch file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_data_datasets import CPU, cfg_of, write_cifar10, write_folder, write_packed
from trainlab.data import build_data
from trainlab.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities:DeprecationWarning"
)


def folder_cfg(root: Path, *overrides: str):
    return cfg_of(
        "data.name=folder", f"data.root={root}", "data.img_size=16", "data.batch_size=4", *overrides
    )


def data_error(cfg, match: str, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as info:
        bundle = build_data(cfg, CPU, **kwargs)
        for split in (bundle.train, bundle.val):
            for _ in split.batches(0):
                pass
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


# ------------------------------------------------------------------------------------------ folder layout
def test_folder_missing_root(tmp_path):
    data_error(folder_cfg(tmp_path / "nowhere"), f"data.root {tmp_path / 'nowhere'} does not exist")


def test_folder_missing_split(tmp_path):
    write_folder(tmp_path)
    shutil.rmtree(tmp_path / "val")
    data_error(folder_cfg(tmp_path), f"missing split folder {tmp_path / 'val'}")


def test_folder_empty_split(tmp_path):
    write_folder(tmp_path)
    shutil.rmtree(tmp_path / "val")
    (tmp_path / "val").mkdir()
    data_error(folder_cfg(tmp_path), f"empty split {tmp_path / 'val'}")


def test_folder_empty_class_folder(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "zebra").mkdir()
    (tmp_path / "train" / "zebra" / "readme.txt").write_text("no images here")
    data_error(folder_cfg(tmp_path), f"empty class folder {tmp_path / 'train' / 'zebra'}")


def test_folder_val_class_not_in_train(tmp_path):
    write_folder(tmp_path)
    shutil.copytree(tmp_path / "val" / "sky", tmp_path / "val" / "ocean")
    data_error(
        folder_cfg(tmp_path), f"val class folder {tmp_path / 'val' / 'ocean'} has no train counterpart"
    )


def plant_bad_images(root: Path) -> list[Path]:
    bad = [root / "train" / "grass" / "broken.jpg", root / "val" / "apple" / "empty.png"]
    bad[0].write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    bad[1].write_bytes(b"")
    return bad


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_image_found_at_load_time(tmp_path, num_workers):
    write_folder(tmp_path)
    bad = plant_bad_images(tmp_path)
    message = data_error(folder_cfg(tmp_path, f"data.num_workers={num_workers}"), "cannot decode image")
    assert str(bad[0]) in message or str(bad[1]) in message
    assert "data.skip_bad_images=true" in message and "trainlab data check" in message


def test_skip_bad_images_drops_them_with_one_warning(tmp_path):
    write_folder(tmp_path)
    plant_bad_images(tmp_path)
    with pytest.warns(UserWarning, match="skipped 2 unreadable image") as record:
        bundle = build_data(folder_cfg(tmp_path, "data.skip_bad_images=true"), CPU)
    assert len([w for w in record if "unreadable" in str(w.message)]) == 1
    assert (bundle.train.num_samples, bundle.val.num_samples) == (12, 6)
    assert sum(len(y) for _, y in bundle.train.batches(0)) == 12
    assert sum(len(y) for _, y in bundle.val.batches(0)) == 6


def test_model_num_classes_smaller_than_the_data(tmp_path):
    write_folder(tmp_path)
    message = data_error(folder_cfg(tmp_path, "model.num_classes=2"), "has 3 classes but model.num_classes=2")
    assert "model.num_classes=3" in message
    data_error(cfg_of("model.num_classes=5"), "has 10 classes but model.num_classes=5")  # shapes too


# ------------------------------------------------------------------------------------------ CIFAR
def test_cifar_missing_folder(tmp_path):
    message = data_error(cfg_of("data.name=cifar10", f"data.root={tmp_path}"), "CIFAR-10 not found")
    assert str(tmp_path / "cifar-10-batches-py") in message and "data.download=true" in message


def test_cifar_missing_batch_file(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    message = data_error(cfg_of("data.name=cifar10", f"data.root={tmp_path}"), "CIFAR-10 file missing")
    assert str(folder / "data_batch_3") in message and "cifar-10-python.tar.gz" in message


def test_cifar_corrupt_batch_file(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x02not a pickle at all")
    data_error(
        cfg_of("data.name=cifar10", f"data.root={tmp_path}"),
        f"cannot read CIFAR-10 file {folder / 'test_batch'}",
    )


def test_cifar100_missing(tmp_path):
    data_error(cfg_of("data.name=cifar100", f"data.root={tmp_path}"), "CIFAR-100 not found")


def test_cifar_download_without_network(tmp_path, monkeypatch):
    # A real failed download: all HTTP(S) goes through a proxy on a closed local port (refused at once,
    # where a missing network could otherwise hang on DNS).
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    message = data_error(
        cfg_of("data.name=cifar10", f"data.root={tmp_path}", "data.download=true"),
        "could not download CIFAR-10",
    )
    assert "no network?" in message and str(tmp_path) in message


# ------------------------------------------------------------------------------------------ packed
def test_packed_errors(tmp_path):
    data_error(cfg_of("data.name=packed", f"data.root={tmp_path / 'none'}"), "does not exist")
    root = write_packed(tmp_path / "p")
    (root / "val_labels.npy").unlink()
    data_error(
        cfg_of("data.name=packed", f"data.root={root}"), f"packed file missing: {root / 'val_labels.npy'}"
    )
    np.save(root / "val_labels.npy", np.full(12, 7, dtype=np.int64))
    data_error(
        cfg_of("data.name=packed", f"data.root={root}"), "labels range 7..7 but meta.json names 3 classes"
    )
    (root / "meta.json").unlink()
    data_error(cfg_of("data.name=packed", f"data.root={root}"), f"{root / 'meta.json'} not found")
    (root / "meta.json").write_text(json.dumps({"classes": ["a"]}))
    data_error(cfg_of("data.name=packed", f"data.root={root}"), "not valid packed metadata")


# ------------------------------------------------------------------------------------------ config
def test_config_errors_for_data():
    with pytest.raises(ConfigError, match="aug.policy=autoaugment is not supported with the tensor loader"):
        build_data(
            cfg_of("data.loader=tensor", "aug.policy=autoaugment", "data.train_size=20", "data.val_size=10"),
            CPU,
        )
    with pytest.raises(ConfigError, match=r"data.mean=\[0.5, 0.5\] must be three numbers"):
        build_data(cfg_of("data.mean=[0.5,0.5]", "data.train_size=20", "data.val_size=10"), CPU)


def test_tensor_loader_on_a_folder_is_a_config_error(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(ConfigError, match="data.loader=tensor needs an in-memory dataset"):
        build_data(folder_cfg(tmp_path, "data.loader=tensor"), torch.device("cpu"))
