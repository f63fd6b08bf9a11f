"""`cifar10` / `cifar100`: the python-pickle folders, read exactly as torchvision reads them.

Same files, same order (data_batch_1..5 then test_batch; train/test for CIFAR-100), same
`reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)`, fine labels for CIFAR-100. Unlike torchvision we do not
md5-check the files (a re-packed or subset copy is legitimate); a missing or unreadable file is a
DataError that names it.

The files are pickles, and `pickle.load` runs whatever a file names (a folder from elsewhere with a planted
`__reduce__` ran a shell command). They are read with `_CifarUnpickler`, which builds only what the real
files hold: dicts, lists, strings and ints (pickle opcodes, no code), numpy arrays and numeric dtypes. Any
other name in a file is refused before it is looked up (DataError, exit 2).
"""

from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainlab.errors import DataError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class _Layout:
    title: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    meta_file: str
    meta_key: str
    label_key: str


LAYOUTS = {
    "cifar10": _Layout(
        "CIFAR-10",
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "label_names",
        "labels",
    ),
    "cifar100": _Layout(
        "CIFAR-100",
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        ("train",),
        ("test",),
        "meta",
        "fine_label_names",
        "fine_labels",
    ),
}


@dataclass
class CifarArrays:
    train_images: np.ndarray  # uint8 N,32,32,3
    train_labels: np.ndarray  # int64 N
    val_images: np.ndarray
    val_labels: np.ndarray
    classes: list[str]


def _fix_hint(layout: _Layout, root: Path) -> str:
    return (
        f"download {layout.archive} from {CIFAR_URL} and extract it into {root} "
        f"(giving {root / layout.folder}), or set data.download=true where a network exists"
    )


def find_batches_dir(root: str | Path, name: str) -> Path | None:
    """The batches folder: `root/<folder>` or `root` itself when it is that folder; None if absent."""
    layout = LAYOUTS[name]
    root_path = Path(root).expanduser()
    if (root_path / layout.folder).is_dir():
        return root_path / layout.folder
    if root_path.is_dir() and (root_path.name == layout.folder or (root_path / layout.meta_file).is_file()):
        return root_path
    return None


class RefusedGlobal(pickle.UnpicklingError):
    """The file names a Python object that no CIFAR file holds."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


def _numeric_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.kind not in "biuf":  # an object dtype would unpickle Python objects into the array
        raise RefusedGlobal("numpy.dtype", repr(dtype.str))
    return dtype


def _latin1_bytes(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """What Python 3 pickles (protocol 2) write for bytes: _codecs.encode(text, 'latin1')."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise RefusedGlobal("_codecs.encode", f"({encoding!r})")
    return codecs.encode(text, "latin1", errors)


# Every global the CIFAR python files hold: numpy's array reconstruction (numpy.core before numpy 2,
# numpy._core after; _frombuffer for protocol 5), ndarray and dtype; bytes as Python 3 writes them at protocol
# 2; and plain builtins. The originals (Python 2 cPickle, protocol 2) name only the first three. The numpy
# functions are taken from numpy itself, not imported by the names in the file (numpy.core warns on import).
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(core, "_reconstruct"): _RECONSTRUCT for core in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(core, "_frombuffer"): _FROMBUFFER for core in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numeric_dtype,
    ("_codecs", "encode"): _latin1_bytes,
    **{(module, kind.__name__): kind for module in ("builtins", "__builtin__") for kind in (dict, list, str, bytes, int)},
}  # fmt: skip


class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler that hands out only the objects in _ALLOWED (persistent ids are refused by default)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise RefusedGlobal(module, name)
        return _ALLOWED[(module, name)]


def safe_unpickle(data: bytes) -> Any:
    """Unpickle a CIFAR python file's bytes, building nothing but what such files hold."""
    return _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()


def _unpickle(path: Path, layout: _Layout, root: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{layout.title} file missing: {path}; {_fix_hint(layout, root)}")
    try:
        entry = safe_unpickle(path.read_bytes())
    except RefusedGlobal as err:
        raise DataError(
            f"{layout.title} file {path} holds {err.qualified}, which no CIFAR file does: not loaded (unpickling it "
            f"could run code); {_fix_hint(layout, root)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - truncated or not a pickle
        raise DataError(
            f"cannot read {layout.title} file {path} ({type(err).__name__}: {err}); {_fix_hint(layout, root)}"
        ) from None
    if not isinstance(entry, dict):
        raise DataError(f"{path} is not a {layout.title} file (a {type(entry).__name__}, not a dict); "
                        f"{_fix_hint(layout, root)}")
    return entry


def _read_split(
    batches: Path, files: tuple[str, ...], layout: _Layout, root: Path
) -> tuple[np.ndarray, np.ndarray]:
    data, labels = [], []
    for name in files:
        entry = _unpickle(batches / name, layout, root)
        key = "labels" if "labels" in entry else "fine_labels"  # torchvision's rule
        if "data" not in entry or key not in entry:
            raise DataError(
                f"{batches / name} is not a {layout.title} batch (no 'data'/'{layout.label_key}'); {_fix_hint(layout, root)}"
            )
        data.append(entry["data"])
        labels.extend(entry[key])
    try:
        images = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
    except ValueError as err:
        raise DataError(
            f"{layout.title} batches in {batches} have a bad shape ({err}); {_fix_hint(layout, root)}"
        ) from None
    images = np.ascontiguousarray(images, dtype=np.uint8)
    label_array = np.asarray(labels, dtype=np.int64)
    if len(label_array) != len(images):
        raise DataError(f"{layout.title} in {batches}: {len(images)} images but {len(label_array)} labels")
    return images, label_array


def _download(name: str, root: Path) -> None:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    layout = LAYOUTS[name]
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
    except Exception as err:  # noqa: BLE001 - URLError, timeouts, md5 mismatch ...
        raise DataError(
            f"data.download=true: could not download {layout.title} into {root} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); no network? "
            f"{_fix_hint(layout, root)} and set data.download=false"
        ) from None


def load_cifar(root: str | Path | None, name: str, download: bool = False) -> CifarArrays:
    """Train and test arrays of CIFAR-10 (`name="cifar10"`) or CIFAR-100 (fine labels)."""
    layout = LAYOUTS[name]
    root_path = Path(root if root else "data").expanduser()
    if root_path.is_file():
        raise DataError(f"data.root {root_path} is a file, not a folder; point it at the folder that holds {layout.folder}")
    batches = find_batches_dir(root_path, name)
    if batches is None and download:
        _download(name, root_path)
        batches = find_batches_dir(root_path, name)
    if batches is None:
        raise DataError(
            f"{layout.title} not found: no {root_path / layout.folder}; {_fix_hint(layout, root_path)}"
        )
    meta = _unpickle(batches / layout.meta_file, layout, root_path)
    if layout.meta_key not in meta:
        raise DataError(
            f"{batches / layout.meta_file} has no '{layout.meta_key}'; {_fix_hint(layout, root_path)}"
        )
    classes = [str(c) for c in meta[layout.meta_key]]
    train_images, train_labels = _read_split(batches, layout.train_files, layout, root_path)
    val_images, val_labels = _read_split(batches, layout.val_files, layout, root_path)
    for split, labels in (("train", train_labels), ("val", val_labels)):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(
                f"{layout.title} {split} labels in {batches} range {labels.min()}..{labels.max()} "
                f"but {batches / layout.meta_file} names {len(classes)} classes"
            )
    return CifarArrays(train_images, train_labels, val_images, val_labels, classes)
