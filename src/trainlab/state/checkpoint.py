"""Full training state on disk: atomic writes with a checksum, weights-only verified loads, RNG states.

Which files a run keeps is retention.py; the stop signals that trigger a save are stops.py.

File format: a checkpoint is exactly what ``torch.save(state)`` writes (a zip archive), with one
addition -- the zip's end-of-archive comment holds ``trainlab-ckpt v1 sha256=<hex>``, the sha256 of
the bytes torch.save produced. Zip readers ignore the comment, so ``torch.load(path,
weights_only=True)`` still opens a trainlab checkpoint directly; ``load_checked`` additionally
verifies the checksum, which catches truncation (a half-copied file, a full disk) and bit rot.

Loading never runs code from the file: the state holds only tensors and plain Python values (the RNG
states included, see capture_rng), so ``weights_only=True`` reads it. A file that needs a full unpickle
is refused with UnsafeCheckpointError unless the caller passes ``trusted=True`` (run.trust_checkpoint).

Writes go to ``.<name>.tmp-<pid>`` in the same directory, are fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX), and the directory is fsynced so the rename survives power loss.
A reader therefore sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainlab.errors import TrainlabError
from trainlab.paths import disk_full, is_disk_full, open_no_follow
from trainlab.rng import capture_rng, restore_rng  # noqa: F401  (part of this module's interface)

_ZIP_END_SIGNATURE = b"PK\x05\x06"
_ZIP_END_LEN = 22  # end-of-central-directory record without comment; its last 2 bytes = comment length
_TRAILER_PREFIX = b"trainlab-ckpt v1 sha256="
_TRAILER_LEN = len(_TRAILER_PREFIX) + 64
_HASH_CHUNK = 1 << 22


class CheckpointError(TrainlabError):
    """A checkpoint is truncated, corrupt or unreadable (exit 2). The message names the file."""

    exit_code = 2


class UnsafeCheckpointError(CheckpointError):
    """The file holds Python objects that only a full unpickle (which can run code) would read (exit 2)."""


TRUST_HINT = "run.trust_checkpoint=true"


# ---------------------------------------------------------------------------------------------
# atomic save / verified load


class _HashingWriter:
    """File-like object for torch.save: writes through to the file and hashes the same bytes."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        self.sha256.update(data)
        return written

    def flush(self) -> None:
        self._file.flush()


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on Windows, where os.open on a dir fails.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _find_os_error(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def temp_path_for(path: Path) -> Path:
    """The temporary name save_atomic writes before renaming (one per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def save_atomic(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` so that a reader sees either the old file or the complete new one.

    On any failure (ENOSPC, a KeyboardInterrupt) the temporary file is removed, the previous file at
    ``path`` is untouched, and the exception is re-raised; a full disk (ENOSPC, EDQUOT) as a one-line
    DiskFullError naming the file and the space it needs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open_no_follow(tmp, "w+b") as file:  # a link planted at the temp name is refused, not followed
            writer = _HashingWriter(file)
            try:
                torch.save(state, writer)
            except Exception as exc:
                # torch's zip writer masks a failed write (ENOSPC...) with its own RuntimeError on
                # exit; surface the OSError, which says what a person can act on.
                cause = _find_os_error(exc)
                if cause is not None and cause is not exc:
                    raise cause from None
                raise
            digest = writer.sha256.hexdigest().encode("ascii")
            # Turn the zip's empty end-of-archive comment into our checksum trailer.
            file.flush()
            end = file.tell()
            file.seek(end - _ZIP_END_LEN)
            record = file.read(_ZIP_END_LEN)
            if record[:4] != _ZIP_END_SIGNATURE or record[-2:] != b"\x00\x00":
                raise CheckpointError(f"torch.save wrote an unexpected archive layout to {tmp}")
            file.seek(end - 2)
            file.write(_TRAILER_LEN.to_bytes(2, "little"))
            file.seek(end)
            file.write(_TRAILER_PREFIX + digest)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(exc):
            kept = f"the previous {path.name} is unchanged" if path.exists() else ""
            raise disk_full(path, serialized_size(state), "checkpoint", kept) from None
        raise
    _fsync_directory(path.parent)


class _CountingSink:
    """A file-like object that only counts what torch.save writes to it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def serialized_size(state: dict) -> int:
    """Bytes `save_atomic` writes for `state` (torch.save's archive plus our trailer), without a disk."""
    sink = _CountingSink()
    torch.save(state, sink)
    return sink.size + _TRAILER_LEN


def _corrupt(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is truncated or corrupt ({reason}); delete it or resume from another "
        f"checkpoint (run.resume=PATH)"
    )


def verify(path: str | Path) -> None:
    """Check the checksum trailer of a trainlab checkpoint; raise CheckpointError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            if size < _ZIP_END_LEN + _TRAILER_LEN:
                raise _corrupt(path, f"only {size} bytes")
            file.seek(size - _TRAILER_LEN - _ZIP_END_LEN)
            record = file.read(_ZIP_END_LEN)
            trailer = file.read(_TRAILER_LEN)
            if not trailer.startswith(_TRAILER_PREFIX) or record[:4] != _ZIP_END_SIGNATURE:
                raise _corrupt(path, "the end of the file is missing or damaged")
            expected = trailer[len(_TRAILER_PREFIX):].decode("ascii", errors="replace")
            sha = hashlib.sha256()
            file.seek(0)
            remaining = size - _TRAILER_LEN - 2  # the comment-length field was 0 when hashed
            while remaining > 0:
                chunk = file.read(min(_HASH_CHUNK, remaining))
                if not chunk:
                    break
                sha.update(chunk)
                remaining -= len(chunk)
            sha.update(b"\x00\x00")
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc.strerror or exc}") from exc
    if sha.hexdigest() != expected:
        raise _corrupt(path, "sha256 mismatch")


def has_trailer(path: str | Path) -> bool:
    """True when the file looks like a trainlab checkpoint (a checksum trailer near its end, even a
    damaged one), so that a truncated trainlab file is verified rather than loaded as a plain one."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - 2 * _TRAILER_LEN))
            return b"trainlab-ckpt" in file.read()
    except OSError:
        return False


def load_checked(
    path: str | Path, map_location: Any = "cpu", require_checksum: bool = False, trusted: bool = False
) -> dict:
    """Load a checkpoint after verifying its checksum.

    A trainlab checkpoint is always verified. A plain ``torch.save`` file (no trailer, e.g. one a user
    made by hand) is accepted unless ``require_checksum=True`` and is only checked by torch.load
    parsing it. The load is ``weights_only``; ``trusted=True`` allows a full unpickle of a file that
    needs one (see safe_torch_load).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if require_checksum or has_trailer(path):
        verify(path)
    try:
        state = safe_torch_load(path, map_location, trusted)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # zip/pickle errors: the file is not a readable checkpoint
        raise _corrupt(path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a training state dict")
    return state


def safe_torch_load(path: str | Path, map_location: Any = "cpu", trusted: bool = False,
                    flag: str = TRUST_HINT) -> Any:
    """torch.load that never runs code from the file unless ``trusted``.

    weights_only=True reads tensors and plain Python values. Checkpoints written by trainlab before
    the RNG states became tensors hold numpy's state as an ndarray: those few numpy globals are read
    by harmless stand-ins (_legacy_numpy_globals), never by numpy's own unpickling. Anything else
    raises UnsafeCheckpointError naming the objects and ``flag``, the setting that allows a full
    unpickle for a file the user trusts.
    """
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
        return _from_legacy_numpy(obj)
    except pickle.UnpicklingError as exc:
        # torch says "Weights only load failed" when the pickle names a global it will not call; any
        # other UnpicklingError is a damaged file and goes up as it is
        if not (isinstance(exc, _NeedsFullUnpickle) or "weights only load failed" in str(exc).lower()):
            raise
        if trusted:
            return torch.load(path, map_location=map_location, weights_only=False)
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # the scan reads the pickle's opcodes only; a damaged file may defeat it
            names = []
        names = sorted(n for n in names if n not in dict(_LEGACY_NUMPY_NAMES))
        what = f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
        raise UnsafeCheckpointError(
            f"{path} holds Python objects{what} that only a full unpickle can read, which can run code "
            f"from the file; if you trust where it came from, set {flag}"
        ) from None


class _NeedsFullUnpickle(pickle.UnpicklingError):
    pass


# numpy's pickle of an ndarray: _reconstruct(ndarray, (0,), b'b') then __setstate__((1, shape, dtype,
# fortran, raw bytes)), the dtype being dtype('u4', False, True) then __setstate__((3, '<', ...)).
class _LegacyNdarrayType:
    """Stands in for the class numpy.ndarray passed to _reconstruct."""


class _LegacyArray:
    """Stands in for numpy's _reconstruct: keeps the array's state, converted after the load."""

    def __init__(self, *args: Any) -> None:
        self.state: tuple = ()

    def __setstate__(self, state: tuple) -> None:
        self.state = state

    def to_numpy(self) -> np.ndarray:
        _, shape, dtype, _fortran, raw = self.state
        if not isinstance(dtype, _LegacyDtype) or not isinstance(raw, bytes) or dtype.kind not in "biuf":
            raise _NeedsFullUnpickle("a numpy array of a non-numeric dtype")
        return np.frombuffer(raw, dtype=dtype.to_numpy()).reshape(shape).copy()


class _LegacyDtype:
    """Stands in for numpy.dtype: a type code and a byte order, nothing else."""

    def __init__(self, code: Any = "", *args: Any) -> None:
        self.code = str(code)
        self.order = "|"

    def __setstate__(self, state: tuple) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=":
            self.order = state[1]

    @property
    def kind(self) -> str:
        try:
            return np.dtype(self.code).kind if self.code.isalnum() else "?"
        except TypeError:
            return "?"

    def to_numpy(self) -> np.dtype:
        return np.dtype(self.code).newbyteorder(self.order if self.order in "<>" else "=")


_LEGACY_NUMPY_NAMES = (
    ("numpy._core.multiarray._reconstruct", _LegacyArray),
    ("numpy.core.multiarray._reconstruct", _LegacyArray),  # numpy 1.x
    ("numpy.ndarray", _LegacyNdarrayType),
    ("numpy.dtype", _LegacyDtype),
)


def _legacy_numpy_globals() -> list:
    return [(cls, name) for name, cls in _LEGACY_NUMPY_NAMES]


def _from_legacy_numpy(obj: Any) -> Any:
    if isinstance(obj, _LegacyArray):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return {k: _from_legacy_numpy(v) for k, v in obj.items()} if _holds_legacy(obj) else obj
    if isinstance(obj, (list, tuple)) and _holds_legacy(obj):
        return type(obj)(_from_legacy_numpy(v) for v in obj)
    return obj


def _holds_legacy(obj: Any) -> bool:
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return any(isinstance(v, _LegacyArray) or (isinstance(v, (dict, list, tuple)) and _holds_legacy(v))
               for v in values)


def load_error_line(exc: BaseException) -> str:
    """The line of a load_state_dict error that says what does not fit (torch's first line only names the
    module): 'size mismatch for fc.weight: ...', 'Missing key(s) in state_dict: ...'."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if line), lines[0] if lines else type(exc).__name__)
    return detail if len(detail) <= 300 else detail[:297] + "..."


# ---------------------------------------------------------------------------------------------
# RNG state


# ---------------------------------------------------------------------------------------------
# a state taken off the live objects


def to_host(state: Any) -> Any:
    """A copy of ``state`` that training can no longer change: every tensor copied into host memory
    (device tensors moved, host tensors cloned, since the live ones are updated in place by the next
    step), containers rebuilt, other values deep-copied. What a background write serialises."""
    if isinstance(state, torch.Tensor):
        tensor = state.detach()
        return tensor.to("cpu", copy=True) if tensor.device.type != "cpu" else tensor.clone()
    if isinstance(state, OrderedDict):  # a module's state_dict: keep its class and its version _metadata
        copied = OrderedDict((key, to_host(value)) for key, value in state.items())
        if hasattr(state, "_metadata"):
            copied._metadata = copy.deepcopy(state._metadata)  # type: ignore[attr-defined]
        return copied
    if isinstance(state, dict):
        return {key: to_host(value) for key, value in state.items()}
    if isinstance(state, list):
        return [to_host(value) for value in state]
    if isinstance(state, tuple):
        return tuple(to_host(value) for value in state)
    return copy.deepcopy(state)


class HostSnapshot:
    """``to_host`` into host memory kept from one snapshot to the next.

    Fresh host memory is the expensive part of a copy (the page faults of ~200 MB cost ~10x the copy
    itself): the buffers of the previous snapshot are reused when the tensors keep their shape, dtype and
    strides, which they do from one checkpoint to the next. Only safe when the previous snapshot is no
    longer read: the run takes a new one after the previous write has finished. Device tensors go to pinned
    memory with one synchronisation at the end."""

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []
        self.reused = 0  # tensors copied into a kept buffer by the last take (what a test or bench reads)

    def take(self, state: Any) -> Any:
        fresh: list[torch.Tensor] = []
        self.reused = 0
        device_copies = [False]
        out = self._copy(state, fresh, device_copies)
        if device_copies[0] and torch.cuda.is_available():
            torch.cuda.synchronize()  # the non-blocking copies have landed before the writer reads them
        self._buffers = fresh
        return out

    def _buffer_for(self, source: torch.Tensor, index: int) -> torch.Tensor:
        if index < len(self._buffers):
            kept = self._buffers[index]
            if kept.shape == source.shape and kept.dtype == source.dtype and kept.stride() == source.stride():
                self.reused += 1
                return kept
        buffer = torch.empty_like(source, device="cpu")  # keeps a dense layout (channels_last stays so)
        return buffer.pin_memory() if source.device.type == "cuda" else buffer

    def _copy(self, obj: Any, fresh: list, device_copies: list) -> Any:
        if isinstance(obj, torch.Tensor):
            source = obj.detach()
            buffer = self._buffer_for(source, len(fresh))
            on_device = source.device.type != "cpu"
            buffer.copy_(source, non_blocking=on_device and buffer.is_pinned())
            device_copies[0] = device_copies[0] or on_device
            fresh.append(buffer)
            return buffer
        if isinstance(obj, OrderedDict):
            copied = OrderedDict((key, self._copy(value, fresh, device_copies)) for key, value in obj.items())
            if hasattr(obj, "_metadata"):
                copied._metadata = copy.deepcopy(obj._metadata)  # type: ignore[attr-defined]
            return copied
        if isinstance(obj, dict):
            return {key: self._copy(value, fresh, device_copies) for key, value in obj.items()}
        if isinstance(obj, list):
            return [self._copy(value, fresh, device_copies) for value in obj]
        if isinstance(obj, tuple):
            return tuple(self._copy(value, fresh, device_copies) for value in obj)
        return copy.deepcopy(obj)


def trailer_digest(path: str | Path) -> str | None:
    """The sha256 a trainlab checkpoint's trailer records (hex), read from its last bytes; None when the
    file has no trailer. Cheap: what an upload is compared by, besides its size."""
    try:
        with open(path, "rb") as file:
            return parse_trailer(_read_tail(file))
    except OSError:
        return None


def _read_tail(file: Any) -> bytes:
    file.seek(0, os.SEEK_END)
    size = file.tell()
    file.seek(max(0, size - _TRAILER_LEN))
    return file.read()


TAIL_BYTES = _TRAILER_LEN  # how many bytes at the end of a checkpoint hold its checksum trailer


def parse_trailer(tail: bytes) -> str | None:
    """The hex sha256 in the last TAIL_BYTES of a checkpoint, or None."""
    if len(tail) < _TRAILER_LEN or not tail[-_TRAILER_LEN:].startswith(_TRAILER_PREFIX):
        return None
    return tail[-_TRAILER_LEN:][len(_TRAILER_PREFIX):].decode("ascii", errors="replace")


__all__ = [
    "CheckpointError",
    "HostSnapshot",
    "UnsafeCheckpointError",
    "capture_rng",
    "load_checked",
    "restore_rng",
    "safe_torch_load",
    "save_atomic",
    "to_host",
    "trailer_digest",
    "verify",
]
