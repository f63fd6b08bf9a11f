"""A search sweep's trials, ranked, and its objective plotted against each searched key.

Read from the files alone (sweep.json's `search` section and each trial's RUN/trial.json), so a report never
needs Optuna or its storage: what `trainlab sweep --search` prints and puts in sweep.md, and what `trainlab
report SWEEP_DIR` shows (HTML and --text).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from trainlab.report.compare import to_markdown
from trainlab.report.plots import COLORS, Plot, _new_figure, _png
from trainlab.report.read import Run, load_sweep, read_sweep
from trainlab.report.text import format_table

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3}
STATE_COLORS = {"COMPLETE": "#1e8449", "PRUNED": "#c0392b", "RUNNING": "#2e86c1", "FAIL": "#7f7f7f"}
MESSAGE_CHARS = 90


def search_of(sweep_dir: str | Path) -> Optional[dict]:
    return read_sweep(Path(sweep_dir)).get("search")


def state(run: Run) -> str:
    return str(run.trial.get("state") or ("RUNNING" if run.status in ("running", "started", "stopped") else "FAIL"))


def value(run: Run) -> Optional[float]:
    """The trial's value; for a trial still running, its last reported epoch's."""
    v = run.trial.get("value")
    if v is None and state(run) == "RUNNING" and run.trial.get("intermediate"):
        v = list(run.trial["intermediate"].values())[-1]
    return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else None


def ranked(runs: list[Run], search: dict) -> list[Run]:
    """Complete trials best first, then pruned ones (by their last reported value), running, failed."""
    sign = 1.0 if search.get("direction") == "minimize" else -1.0

    def key(run: Run) -> tuple:
        v = value(run)
        return (STATE_ORDER.get(state(run), 4), v is None, sign * v if v is not None else 0.0, run.name)

    return sorted(runs, key=key)


def stopped_step(run: Run) -> str:
    """`21/60`: the optimizer step it stopped at (or ran to) of its planned steps."""
    t = run.trial
    done = t.get("stopped_at_step") or t.get("steps")
    planned = t.get("planned_steps")
    if done is None:
        return "-"
    return f"{done}/{planned}" if planned else str(done)


def pruned_by(run: Run) -> str:
    why = run.trial.get("pruned_by")
    if not isinstance(why, dict):
        return str(run.trial.get("error") or "")[:MESSAGE_CHARS]
    kind = why.get("pruner", why.get("kind", "?"))
    kind = f"{kind} pruner" if why.get("kind") == "pruner" else kind
    rule = f" ({why['rule']})" if why.get("rule") else ""
    message = str(why.get("message", ""))
    return f"{kind}{rule}: {message[:MESSAGE_CHARS]}{'...' if len(message) > MESSAGE_CHARS else ''}"


def ranking(runs: list[Run], search: dict) -> tuple[list[str], list[list[str]]]:
    keys = list(search.get("space", {}))
    objective = search.get("objective", "value")
    headers = ["rank", "trial", "state", objective, *keys, "steps", "pruned by / error"]
    rows = []
    for i, run in enumerate(ranked(runs, search), 1):
        v = value(run)
        params = run.trial.get("params") or run.values
        rows.append([str(i), run.name, state(run), f"{v:.4g}" if v is not None else "-",
                     *(_param(params.get(k)) for k in keys), stopped_step(run), pruned_by(run)])  # fmt: skip
    return headers, rows


def _param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def summary_line(runs: list[Run], search: dict) -> str:
    states = [state(r) for r in runs]
    counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in STATE_ORDER if states.count(s))
    space = ", ".join(f"{k}={v}" for k, v in search.get("space", {}).items())
    return (f"{len(runs)} trials ({counts}); {search.get('direction', 'maximize')} {search.get('objective')}; "
            f"space {space}; pruner {search.get('pruner')}, watch pruning {'on' if search.get('watch_prune') else 'off'}")


def ranking_markdown(sweep_dir: str | Path) -> str:
    search = search_of(sweep_dir)
    if not search:
        return ""
    runs = load_sweep(sweep_dir)
    headers, rows = ranking(runs, search)
    return f"## Trials, ranked\n\n{summary_line(runs, search)}\n\n" + to_markdown(headers, rows)


def ranking_text(sweep_dir: str | Path) -> str:
    search = search_of(sweep_dir)
    if not search:
        return ""
    runs = load_sweep(sweep_dir)
    headers, rows = ranking(runs, search)
    return summary_line(runs, search) + "\n" + format_table(headers, rows)


def objective_plots(runs: list[Run], search: dict) -> list[Plot]:
    """One scatter per searched key: the trial's value against its setting, by state (pruned trials at their
    last reported value), on a log axis for a :log range, one column per choice for a list of choices."""
    objective = search.get("objective", "value")
    plots = []
    for index, (key, spec) in enumerate(search.get("space", {}).items()):
        fig, ax = _new_figure()
        choices = [c.strip() for c in str(spec).split(",")] if "," in str(spec) else None
        drawn, no_value, every_x = False, [], []
        for st in STATE_ORDER:
            xs, ys = [], []
            for run in runs:
                v, x = value(run), (run.trial.get("params") or {}).get(key)
                if state(run) != st or x is None:
                    continue
                if choices is not None:
                    x = choices.index(str(x)) if str(x) in choices else len(choices)
                every_x.append(float(x))
                if v is None:
                    if st == "PRUNED":
                        no_value.append(float(x))  # stopped before its first epoch's value
                    continue
                xs.append(float(x))
                ys.append(v)
            if xs:
                drawn = True
                marker = "x" if st == "PRUNED" else "o"
                ax.scatter(xs, ys, s=36, marker=marker, color=STATE_COLORS[st], label=f"{st.lower()} ({len(xs)})")
        if no_value:  # along the bottom edge: where the watch stopped them, with no epoch to score
            ax.scatter(no_value, [0.0] * len(no_value), s=40, marker="v", color=STATE_COLORS["PRUNED"], clip_on=False,
                       transform=ax.get_xaxis_transform(), label=f"pruned before an epoch ended ({len(no_value)})")
            drawn = True
        best = ranked(runs, search)[0] if runs else None
        if best is not None and state(best) == "COMPLETE" and (best.trial.get("params") or {}).get(key) is not None:
            ax.annotate(f"best: {best.name}", xy=(0.01, 0.97), xycoords="axes fraction", va="top", fontsize=8,
                        color=COLORS[0])  # fmt: skip
        if choices is not None:
            ax.set_xticks(range(len(choices)), choices)
            ax.set_xlim(-0.5, len(choices) - 0.5)
        elif ":log" in str(spec) and drawn and min(every_x) > 0:
            ax.set_xscale("log")
            low, high = min(every_x), max(every_x)
            ax.set_xlim(low / 1.5, high * 1.5)  # every trial in view, those drawn on the bottom edge too
        elif every_x:
            low, high = min(every_x), max(every_x)
            pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
            ax.set_xlim(low - pad, high + pad)
        ax.set_title(f"{objective} against {key}", fontsize=11)
        ax.set_xlabel(key)
        ax.set_ylabel(f"{objective} (best epoch; pruned: last reported)")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no trial has a value yet", ha="center", va="center", transform=ax.transAxes)
        plots.append(Plot(f"search-{index}-{key.replace('.', '_')}", f"{objective} against {key}", _png(fig)))
    return plots
