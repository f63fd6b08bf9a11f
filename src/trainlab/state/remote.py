"""Run dirs on object storage (`run.dir=s3://bucket/runs/r50`, or any fsspec URL: gs://, az://, file://).

The run works in a local cache folder (`run.cache_dir`) exactly as in a local run dir; this module keeps the
store up to date with it and brings a run back from the store onto a machine whose cache is empty.

- Every checkpoint the run keeps is uploaded when written (from the background writer), then checked: the
  object's size and the sha256 in its trailer (the last bytes, read back with a ranged read) must be the
  local file's. Object stores publish an object only once its upload is complete, so a reader of the bucket
  sees the previous `last.pt` or the new one, never half of one; on a plain file system (file://) the upload
  goes to a temporary name that is renamed. Files the run pruned locally are removed from the store after
  the new one is verified. `checkpoints/index.json` records each file's sha256, size and global step.
- `config.yaml`, `metrics.csv`, `steps.jsonl`, `events.jsonl`, `summary.json` are uploaded at each epoch
  end, periodic checkpoint, stop and at the end.
- A store that fails mid-run costs a warning event; what is not uploaded stays pending (and on disk: the
  checkpoint manager does not prune a pending file) and is retried at every later sync; at the end the run
  retries for up to `run.upload_wait_s` and then says what is still not uploaded.
- At start the store is checked (reachable, bucket present, credentials accepted for reading and writing):
  any failure is one line, exit 2, before anything trains. Then checkpoints the cache lacks (or holds at an
  older step) are downloaded and verified by their full sha256; the small files come with them.

Credentials and endpoints come from where the store's own library looks (for S3: the AWS variables and
files, AWS_ENDPOINT_URL, fsspec's configuration); `run.storage_options` is passed to the file system.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from trainlab.errors import ConfigError, first_line
from trainlab.state import checkpoint as ckpt

SMALL_FILES = ("config.yaml", "metrics.csv", "steps.jsonl", "events.jsonl", "summary.json")
INDEX = "checkpoints/index.json"
LOCAL_STATE = ".trainlab-sync.json"  # in the cache: what was uploaded, so a later command knows what is pending
_CHECKPOINT_RE = re.compile(r"^(last|periodic-step=\d+|epoch=\d+-.+)\.pt$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_LOCAL_PROTOCOLS = {"file", "local"}
# S3 defaults: fail over in seconds rather than minutes when the endpoint is down (the run retries later).
_S3_DEFAULTS = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                                  "retries": {"max_attempts": 3, "mode": "standard"}}}  # fmt: skip
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}


def is_url(text: Any) -> bool:
    """True for an fsspec URL (s3://..., gs://..., file://...), false for a plain path."""
    return isinstance(text, str) and bool(_URL_RE.match(text))


def default_cache_dir(url: str) -> Path:
    """Where a run dir URL is worked on locally: ~/.cache/trainlab/runs/<protocol>/<bucket>/<path>. The same
    URL gives the same folder, so a re-issued command (or a restarted worker) finds its own files."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trainlab" / "runs"
    protocol, rest = url.split("://", 1)
    parts = [p for p in re.split(r"[/\\]+", rest) if p not in ("", ".", "..")]
    return base.joinpath(protocol, *parts)


def _is_checkpoint_name(name: str) -> bool:
    return bool(_CHECKPOINT_RE.match(name))


def _open(url: str, storage_options: Optional[dict], need_folder: bool = True) -> tuple[Any, str]:
    """(file system, path inside it) for `url`; a bad URL or a missing fsspec package is one line."""
    try:
        import fsspec
    except ImportError:
        raise ConfigError(f"run.dir={url} needs fsspec; install trainlab[s3] (or [gcs], [azure])") from None
    protocol = url.split("://", 1)[0].lower()
    options = dict(storage_options or {})
    if protocol in ("s3", "s3a"):
        for key, value in _S3_DEFAULTS.items():
            if key == "config_kwargs":
                options[key] = {**value, **dict(options.get(key) or {})}
            else:
                options.setdefault(key, value)
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        extra = EXTRAS.get(protocol)
        fix = f"pip install 'trainlab[{extra}]'" if extra else f"install the fsspec package for {protocol}://"
        raise ConfigError(f"run.dir={url}: the {protocol}:// store needs a package that is missing "
                          f"({first_line(exc)}); {fix}") from None  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"run.dir={url} is not a storage URL fsspec knows ({first_line(exc)}); "
                          "use s3://BUCKET/PATH, gs://, az:// or file://") from None  # fmt: skip
    except TypeError as exc:
        raise ConfigError(f"run.storage_options for {url} are not accepted by the {protocol}:// file system "
                          f"({first_line(exc)}); check their names") from None  # fmt: skip
    path = path.rstrip("/")
    if need_folder and (not path or (protocol not in _LOCAL_PROTOCOLS and "/" not in path.strip("/"))):
        raise ConfigError(f"run.dir={url} names no folder inside the bucket; use {protocol}://BUCKET/PATH")
    return fs, path


def _endpoint(options: Optional[dict]) -> Optional[str]:
    options = dict(options or {})
    return (options.get("endpoint_url") or dict(options.get("client_kwargs") or {}).get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))  # fmt: skip


def _store_problem(url: str, exc: BaseException, bucket: str, endpoint: Optional[str] = None) -> ConfigError:
    """One line for a store that cannot be used: missing bucket, refused credentials, unreachable."""
    name, text = type(exc).__name__, first_line(exc)
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return ConfigError(f"run.dir={url}: no credentials found for the store; set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run.storage_options")  # fmt: skip
    if isinstance(exc, PermissionError) or any(w in text for w in ("AccessDenied", "InvalidAccessKeyId",
                                                                     "SignatureDoesNotMatch", "Forbidden")):
        return ConfigError(f"run.dir={url}: the store refused the credentials ({text}); check "
                           "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run.storage_options")  # fmt: skip
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text:
        return ConfigError(f"run.dir={url}: bucket '{bucket}' does not exist (or these credentials cannot see "
                           f"it); create it or fix the URL")  # fmt: skip
    where = f" at {endpoint}" if endpoint else ""
    return ConfigError(f"run.dir={url}: cannot reach the store{where} ({name}: {text}); check the network, "
                       "AWS_ENDPOINT_URL or run.storage_options")  # fmt: skip


class RunStore:
    """The store side of one run dir: checks it, pulls a run from it, pushes the cache's files to it.

    Pushes run on the background writer's thread (and at the end on the main one); `lock` keeps two of them
    from interleaving. `on_event(kind, severity, message, **data)` reports failures and recoveries."""

    def __init__(self, url: str, cache_dir: str | Path | None = None, storage_options: Optional[dict] = None,
                 on_event: Optional[Callable[..., None]] = None) -> None:  # fmt: skip
        self.url = url.rstrip("/")
        self.cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(self.url)
        self.fs, self.root = _open(self.url, storage_options)
        self.endpoint = _endpoint(storage_options) if self.url.startswith(("s3://", "s3a://")) else None
        self.protocol = self.url.split("://", 1)[0].lower()
        self.on_event = on_event or (lambda *args, **kwargs: None)
        self.lock = threading.RLock()
        self.failing = False  # the last attempt failed: the next success says the store is back
        self.pending: dict[str, str] = {}  # relative name -> why it is not uploaded yet
        self.index: dict[str, dict] = {}
        self.uploaded_bytes = 0

    # -- where things are ------------------------------------------------------------------------
    def remote(self, name: str) -> str:
        return f"{self.root}/{name}"

    @property
    def bucket(self) -> str:
        return self.root.strip("/").split("/", 1)[0]

    def _local_state(self) -> dict:
        try:
            return json.loads((self.cache / LOCAL_STATE).read_text())
        except (OSError, ValueError):
            return {}

    def _save_local_state(self) -> None:
        payload = {"url": self.url, "index": self.index, "pending": sorted(self.pending)}
        tmp = self.cache / f".{LOCAL_STATE}.tmp-{os.getpid()}"
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(payload, indent=1))
            os.replace(tmp, self.cache / LOCAL_STATE)

    # -- at start --------------------------------------------------------------------------------
    def check(self) -> None:
        """Reachable, bucket present, credentials good for listing and writing: else one line (exit 2)."""
        probe = self.remote(f".trainlab-probe-{os.getpid()}")
        try:
            if self.protocol in _LOCAL_PROTOCOLS:
                self.fs.makedirs(self.root, exist_ok=True)
            else:
                self.fs.ls(self.bucket, refresh=True)
            self.fs.pipe_file(probe, b"")
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(probe)
        except ConfigError:
            raise
        except Exception as exc:
            raise _store_problem(self.url, exc, self.bucket, self.endpoint) from None

    def has_run(self) -> bool:
        """Whether the store already holds a run here (a summary or a checkpoint)."""
        try:
            return bool(self.remote_checkpoints()) or self.fs.exists(self.remote("summary.json"))
        except Exception as exc:
            raise _store_problem(self.url, exc, self.bucket, self.endpoint) from None

    def remote_checkpoints(self) -> dict[str, int]:
        """{name: size} of the checkpoint objects in the store."""
        try:
            entries = self.fs.ls(self.remote("checkpoints"), detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        found = {}
        for entry in entries:
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") != "directory" and _is_checkpoint_name(name):
                found[name] = int(entry.get("size") or 0)
        return found

    def _read_remote_index(self) -> dict[str, dict]:
        try:
            data = json.loads(self.fs.cat_file(self.remote(INDEX)))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def pull(self, say: Callable[[str], None] = print) -> list[str]:
        """Bring the store's run into the cache: every checkpoint the cache lacks or holds at an older step
        (each verified by its full sha256 before it takes its name; a bad one is skipped), and the small files
        when any checkpoint came, or the cache has none. Returns the names downloaded."""
        self.cache.mkdir(parents=True, exist_ok=True)
        (self.cache / "checkpoints").mkdir(exist_ok=True)
        local_state = self._local_state()
        local_index: dict = local_state.get("index", {}) if local_state.get("url") == self.url else {}
        try:
            objects = self.remote_checkpoints()
            remote_index = self._read_remote_index()
            downloaded: list[str] = []
            by_digest: dict[str, Path] = {}
            for name in sorted(objects, key=lambda n: (n != "last.pt", n)):
                local = self.cache / "checkpoints" / name
                theirs = remote_index.get(f"checkpoints/{name}", {})
                mine = local_index.get(f"checkpoints/{name}", {})
                if local.is_file():
                    newer = theirs.get("global_step", -1) > mine.get("global_step", theirs.get("global_step", -1))
                    if not newer or ckpt.trailer_digest(local) == theirs.get("sha256"):
                        continue
                if self._download_checkpoint(name, objects[name], theirs.get("sha256"), by_digest, say):
                    downloaded.append(f"checkpoints/{name}")
            has_small = any((self.cache / n).exists() for n in SMALL_FILES)
            if downloaded or not has_small:
                for name in SMALL_FILES:
                    with contextlib.suppress(FileNotFoundError):
                        self._get(name, self.cache / name)
                        downloaded.append(name)
        except ConfigError:
            raise
        except Exception as exc:
            raise _store_problem(self.url, exc, self.bucket, self.endpoint) from None
        self.index = {**local_index, **{k: v for k, v in remote_index.items() if k in downloaded}}
        for name in downloaded:
            if name.endswith(".pt") and name not in self.index:
                path = self.cache / name
                self.index[name] = {"sha256": ckpt.trailer_digest(path), "size": path.stat().st_size}
        # What the cache holds that the store lacks (a run that ended while the store was down) is pending.
        for path in sorted((self.cache / "checkpoints").glob("*.pt")):
            name = f"checkpoints/{path.name}"
            if path.name not in objects or ckpt.trailer_digest(path) != remote_index.get(name, {}).get("sha256"):
                if name not in downloaded and _is_checkpoint_name(path.name):
                    self.pending[name] = "not in the store"
        self.pending.update({n: "earlier upload failed" for n in local_state.get("pending", [])
                             if (self.cache / n).exists()})  # fmt: skip
        self._save_local_state()
        if downloaded:
            say(f"downloaded {len(downloaded)} file(s) of {self.url} into {self.cache}")
        return downloaded

    def _get(self, name: str, dest: Path) -> None:
        tmp = dest.with_name(f".{dest.name}.download-{os.getpid()}")
        try:
            self.fs.get_file(self.remote(name), str(tmp))
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _download_checkpoint(self, name: str, size: int, digest: Optional[str], by_digest: dict[str, Path],
                             say: Callable[[str], None]) -> bool:  # fmt: skip
        dest = self.cache / "checkpoints" / name
        tmp = dest.with_name(f".{name}.download-{os.getpid()}")
        try:
            if digest and digest in by_digest:  # a best file that is the same bytes as last.pt: link it
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.link(by_digest[digest], tmp)
            else:
                self.fs.get_file(self.remote(f"checkpoints/{name}"), str(tmp))
                try:
                    ckpt.verify(tmp)
                except ckpt.CheckpointError as exc:
                    say(f"{self.url}/checkpoints/{name} is unusable ({first_line(exc)}); passed over")
                    return False
            os.replace(tmp, dest)
            found = ckpt.trailer_digest(dest)
            if found:
                by_digest[found] = dest
            return True
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    # -- while running ---------------------------------------------------------------------------
    def holds(self, path: Path) -> bool:
        """Whether the cache must keep `path`: its upload is pending (the checkpoint manager asks)."""
        return f"checkpoints/{Path(path).name}" in self.pending

    def _failed(self, names: list[str], exc: BaseException) -> None:
        for name in names:
            self.pending[name] = f"{type(exc).__name__}: {first_line(exc)}"
        if not self.failing:
            self.failing = True
            self.on_event("upload_failed", "warning",
                          f"cannot upload to {self.url} ({type(exc).__name__}: {first_line(exc)}); training "
                          f"goes on, the files stay in {self.cache} and the upload is retried",
                          files=names)  # fmt: skip

    def _recovered(self, names: list[str]) -> bool:
        """Says the store is back (an event in events.jsonl) when the last attempt had failed."""
        if not self.failing:
            return False
        self.failing = False
        self.on_event("upload_recovered", "info", f"{self.url} reachable again: uploaded "
                      f"{', '.join(names)}", files=names)  # fmt: skip
        return True

    def _put_checkpoint(self, path: Path, step: Optional[int]) -> None:
        """Upload one checkpoint and check what the store holds: its size, and the sha256 in its trailer."""
        name = f"checkpoints/{path.name}"
        size = path.stat().st_size
        digest = ckpt.trailer_digest(path)
        target = self.remote(name)
        if self.protocol in _LOCAL_PROTOCOLS:  # a plain file system: write aside, then rename
            tmp = self.remote(f"checkpoints/.{path.name}.upload-{os.getpid()}")
            self.fs.put_file(str(path), tmp)
            self.fs.mv(tmp, target)
        else:  # an object store publishes the object once the whole upload is in
            self.fs.put_file(str(path), target)
        self.fs.invalidate_cache(target)
        info = self.fs.info(target)
        if int(info.get("size") or -1) != size:
            raise OSError(f"{target} holds {info.get('size')} bytes after the upload, {size} expected")
        tail = self.fs.cat_file(target, start=max(0, size - ckpt.TAIL_BYTES), end=size)
        if digest is not None and ckpt.parse_trailer(tail) != digest:
            raise OSError(f"{target}: the uploaded checksum trailer differs from the local file's")
        entry = {"sha256": digest, "size": size}
        if step is not None:
            entry["global_step"] = int(step)
        elif name in self.index and self.index[name].get("sha256") == digest:
            entry = {**self.index[name], **entry}
        self.index[name] = entry
        self.uploaded_bytes += size

    def push_checkpoints(self, paths: list[Path], step: Optional[int] = None) -> None:
        """Upload these checkpoints (and whatever is pending), then drop from the store what the cache pruned.
        Failures are reported, kept pending, never raised: training goes on."""
        with self.lock:
            names = [f"checkpoints/{Path(p).name}" for p in paths]
            steps = {n: step for n in names}
            todo = [n for n in self.pending if n.endswith(".pt") and n not in names] + names
            done: list[str] = []
            try:
                for name in todo:
                    local = self.cache / name
                    if not local.is_file():  # pruned meanwhile: nothing to upload
                        self.pending.pop(name, None)
                        continue
                    self._put_checkpoint(local, steps.get(name))
                    self.pending.pop(name, None)
                    done.append(name)
                self.fs.pipe_file(self.remote(INDEX), json.dumps(self.index, indent=1).encode())
                self._prune_remote()
            except Exception as exc:
                self._failed([n for n in todo if n not in done] or names, exc)
            else:
                if done:
                    self._recovered(done)
            finally:
                self._save_local_state()

    def _prune_remote(self) -> None:
        """Remove from the store the checkpoints the cache no longer keeps (after the new one is verified)."""
        local = {p.name for p in (self.cache / "checkpoints").glob("*.pt")}
        gone = [name for name in self.remote_checkpoints() if name not in local]
        for name in gone:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.remote(f"checkpoints/{name}"))
            self.index.pop(f"checkpoints/{name}", None)
        if gone:
            self.fs.pipe_file(self.remote(INDEX), json.dumps(self.index, indent=1).encode())

    def push_files(self, names: tuple[str, ...] = SMALL_FILES) -> None:
        """Upload the run's small files that exist in the cache. Failures are reported and kept pending."""
        with self.lock:
            present = [n for n in names if (self.cache / n).is_file()]
            done: list[str] = []
            try:
                for name in present:
                    self.fs.put_file(str(self.cache / name), self.remote(name))
                    self.pending.pop(name, None)
                    done.append(name)
            except Exception as exc:
                self._failed([n for n in present if n not in done], exc)
            else:
                # with checkpoints still pending, their upload announces it
                if done and not self.pending and self._recovered(done) and "events.jsonl" in done:
                    # the event went into the events.jsonl just uploaded: the store's copy must have it too
                    # (at the run's end nothing else would carry it: the bucket's events lacked it)
                    with contextlib.suppress(Exception):  # a failure here is the next sync's to report
                        self.fs.put_file(str(self.cache / "events.jsonl"), self.remote("events.jsonl"))
            finally:
                self._save_local_state()

    def sync(self) -> None:
        """Upload everything pending, then the small files."""
        self.push_checkpoints([])
        self.push_files()

    def finish(self, wait_s: float, say: Callable[[str], None] = print) -> list[str]:
        """At a stop or the end: upload what is pending and the small files, retrying for up to `wait_s`
        seconds while the store fails. Returns the names still not uploaded (said in one line)."""
        deadline = time.monotonic() + max(0.0, wait_s)
        delay = 1.0
        while True:
            self.sync()
            if not self.pending or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
        missing = sorted(self.pending)
        if missing:
            say(f"not uploaded to {self.url} yet: {', '.join(missing)} (kept in {self.cache}); re-issue the same "
                "command when the store is reachable to upload them")  # fmt: skip
        return missing


# ------------------------------------------------------------------------------------------------
# readers: `trainlab report`, `runs`, `eval` on s3:// paths


def fetch_run_dirs(url: str, dest: str | Path, storage_options: Optional[dict] = None) -> list[Path]:
    """Download the small files of every run dir at or under `url` into `dest` (mirroring the layout) and
    return the local folders, for the readers that work on local files. Checkpoints stay in the store."""
    fs, root = _open(url, storage_options, need_folder=False)
    dest = Path(dest)
    try:
        found = [p for p in fs.find(root) if p.rsplit("/", 1)[-1] in (*SMALL_FILES, "sweep.json", "error.txt")]
    except Exception as exc:
        raise _store_problem(url, exc, root.split("/", 1)[0]) from None
    folders = set()
    for remote_path in found:
        relative = remote_path[len(root):].lstrip("/")
        if "checkpoints/" in relative:
            continue
        local = dest / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote_path, str(local))
        folders.add(local.parent)
    return sorted(folders)


def fetch_file(url: str, dest_dir: str | Path, storage_options: Optional[dict] = None) -> Path:
    """Download one file (a checkpoint for `trainlab eval`) into `dest_dir`; a missing one is one line."""
    fs, path = _open(url, storage_options)
    local = Path(dest_dir) / path.rsplit("/", 1)[-1]
    try:
        fs.get_file(path, str(local))
    except FileNotFoundError:
        raise ConfigError(f"checkpoint not found: {url}; give the URL of a .pt file in a run's checkpoints/") from None
    except Exception as exc:
        raise _store_problem(url, exc, path.split("/", 1)[0]) from None
    return local
