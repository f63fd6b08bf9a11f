"""One check's verdict, and the doctor's report (json + text) built from them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("ok", "warning", "problem", "skipped")
EVENT_SEVERITY = {"ok": "info", "skipped": "info", "warning": "warning", "problem": "critical"}


@dataclass
class Verdict:
    check: str  # e.g. "initial_loss"
    status: str  # ok | warning | problem | skipped
    summary: str  # what was seen, with the figures
    fix: str = ""  # what to try; empty when ok
    figures: dict[str, Any] = field(default_factory=dict)
    cost_s: float = 0.0  # seconds the check took

    def line(self) -> str:
        fix = f" -> {self.fix}" if self.fix and self.status != "ok" else ""
        return f"[{self.status.upper():7s}] {self.check} ({self.cost_s:.1f}s): {self.summary}{fix}"

    def event(self) -> dict[str, Any]:
        """As keyword arguments of a run event (events.jsonl, kind `preflight`): severity, message, then the data."""
        message = f"pre-flight {self.check}: {self.summary}" + (f" -> {self.fix}" if self.fix and self.status != "ok" else "")
        return {**self.figures, "severity": EVENT_SEVERITY[self.status], "message": message, "check": self.check,
                "status": self.status, "cost_s": round(self.cost_s, 3)}


def timed(check: Callable[..., Verdict | list[Verdict]], *args: Any) -> list[Verdict]:
    """Run a check and stamp its cost on the verdict(s) it returns (shared when it returns several)."""
    started = time.perf_counter()
    result = check(*args)
    verdicts = result if isinstance(result, list) else [result]
    for v in verdicts:
        v.cost_s = round((time.perf_counter() - started) / len(verdicts), 3)
    return verdicts


def exit_code(verdicts: list[Verdict]) -> int:
    return 1 if any(v.status == "problem" for v in verdicts) else 0


def write_report(out_dir: Path, header: dict[str, Any], verdicts: list[Verdict]) -> str:
    """doctor.json and doctor.txt in out_dir; returns the text."""
    counts = {s: sum(v.status == s for v in verdicts) for s in STATUSES}
    lines = [f"trainlab doctor: {header.get('config')} ({header.get('run')})", ""]
    lines += [v.line() for v in verdicts]
    total = sum(v.cost_s for v in verdicts)
    lines += ["", f"{counts['problem']} problem(s), {counts['warning']} warning(s), {counts['ok']} ok "
              f"in {total:.1f}s of checks; report in {out_dir}"]
    text = "\n".join(lines)
    document = {**header, "counts": counts, "exit_code": exit_code(verdicts), "checks": [asdict(v) for v in verdicts]}
    (out_dir / "doctor.json").write_text(json.dumps(document, indent=2, default=float) + "\n")
    (out_dir / "doctor.txt").write_text(text + "\n")
    return text
