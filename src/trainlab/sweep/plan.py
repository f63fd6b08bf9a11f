"""Planning a sweep: the grid's runs, their names, and every run's config checked before anything starts.

A planned run is a name (its folder in the sweep directory) and the `key=value` settings it adds to the
sweep's fixed overrides. Grids and searches both end up here: a search trial is a planned run whose settings
are its sampled parameters.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from trainlab.errors import TrainlabError, UsageError

MAX_NAME = 100


@dataclass
class PlannedRun:
    name: str
    settings: dict[str, str]  # every grid key -> its value in this run
    values: dict[str, str]  # the keys that vary across the sweep (names and table columns)
    extra: list[str] = field(default_factory=list)  # overrides the sweep adds (a search trial's callback)

    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.settings.items()]


def split_values(text: str) -> list[str]:
    """Split `v1,v2,...` on the commas outside brackets, so list values like `[0.9,0.99]` stay whole."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise UsageError(f"--grid '{item}' is not section.key=v1,v2,... (e.g. --grid optim.lr=0.05,0.1)")
        values = split_values(text)
        if any(v == "" for v in values):
            raise UsageError(f"--grid '{item}' has an empty value; write values separated by commas")
        if key in grid:
            raise UsageError(f"--grid names '{key}' twice; give all its values in one --grid {key}=v1,v2")
        grid[key] = list(dict.fromkeys(values))  # repeated values would only run twice
    return grid


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_.") or "_"


def run_names(grid: dict[str, list[str]]) -> list[PlannedRun]:
    """The cartesian product, each run named from the values that vary (filesystem-safe and unique)."""
    keys = list(grid)
    varied = [k for k in keys if len(grid[k]) > 1] or keys
    short = {k: k.rsplit(".", 1)[-1] for k in varied}
    if len(set(short.values())) < len(short):  # e.g. optim.lr and sched.lr: keep the full keys
        short = {k: k for k in varied}
    planned, used = [], set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        settings = dict(zip(keys, combo))
        name = "-".join(f"{short[k]}={settings[k]}" for k in varied) if varied else "run"
        name = safe_name(name)
        if len(name) > MAX_NAME:
            name = name[: MAX_NAME - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
        base, n = name, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        planned.append(PlannedRun(name, settings, {k: settings[k] for k in varied if len(grid[k]) > 1}))
    return planned


def split_items(items: list[str], grid_items: list[str]) -> tuple[Optional[str], dict[str, list[str]], list[str]]:
    """CONFIG, grid and fixed overrides from the positional items and the --grid values.

    `--grid` takes several values, so `--grid a.b=1,2 c.d=3` puts `c.d=3` in the grid too: a one-value
    grid key is a fixed setting that does not appear in run names. A CONFIG caught by --grid is found.
    """
    config: Optional[str] = None
    overrides: list[str] = []
    grid_entries: list[str] = []
    for item in [*items, *grid_items]:
        if "=" not in item:
            if item in grid_items and not _looks_like_config(item):
                raise UsageError(f"--grid '{item}' has no values; write --grid {item}=v1,v2 (values separated by commas)")
            if config is not None:
                raise UsageError(f"two configs given ('{config}', '{item}'); give one CONFIG, then key=value")
            config = item
        elif item in grid_items:
            grid_entries.append(item)
        else:
            overrides.append(item)
    if config is not None and not Path(config).is_file():
        raise UsageError(f"config file not found: {config}")
    return config, parse_grid(grid_entries), overrides


def _looks_like_config(item: str) -> bool:
    """A word without '=' after --grid is a CONFIG only if it names a file or a YAML name; else it is a grid
    key whose values were forgotten (`--grid optim.lr`), and saying 'config file not found' would mislead."""
    return Path(item).is_file() or item.endswith((".yaml", ".yml"))


def train_overrides(overrides: list[str], run: PlannedRun, run_dir: Path) -> list[str]:
    """Every key=value one run's `trainlab train` gets: fixed ones, its grid values, name and dir."""
    extra = [] if any(o.startswith("run.name=") for o in overrides) else [f"run.name={run.name}"]
    return [*overrides, *run.overrides(), *extra, *run.extra, f"run.dir={run_dir}"]


def train_args(config: Optional[str], overrides: list[str], run: PlannedRun, run_dir: Path) -> list[str]:
    """What follows `trainlab train` for this run."""
    return [*([config] if config else []), *train_overrides(overrides, run, run_dir)]


def load_run_config(config: Optional[str], overrides: list[str], run: PlannedRun, run_dir: Path) -> Any:
    """The run's config as its `trainlab train` will load it; a bad key or value names the run."""
    from trainlab.config import load_config

    try:
        return load_config(config, train_overrides(overrides, run, run_dir))
    except TrainlabError as exc:
        raise type(exc)(f"sweep run {run.name}: {exc} (no run was started)") from None


def validate_runs(config: Optional[str], overrides: list[str], planned: list[PlannedRun], sweep_dir: Path) -> list[Any]:
    """Load every run's config as its `trainlab train` would, before anything is launched or written: a bad
    key or value stops the sweep with that run's one-line error instead of failing each run in its log."""
    from trainlab.paths import check_output_dir

    check_output_dir(sweep_dir, "--dir", UsageError)
    return [load_run_config(config, overrides, p, sweep_dir / p.name) for p in planned]


def with_callback(cfg: Any, entry: dict[str, Any]) -> str:
    """The `train.callbacks=[...]` override that keeps the run's own callbacks (config file or overrides) and
    adds `entry`: a second `train.callbacks=` override would replace the list, not extend it."""
    from omegaconf import OmegaConf

    existing = OmegaConf.to_container(cfg.train.callbacks) if cfg.train.callbacks else []
    return "train.callbacks=" + json.dumps([*existing, entry])  # JSON is YAML: OmegaConf reads it as a list
