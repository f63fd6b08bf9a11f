"""The link between one training process and its Optuna trial: a callback, installed by the sweep through
`train.callbacks=[{target: trainlab.sweep.trial:OptunaTrial, storage: URL, study: NAME, trial: N, ...}]`.

It works the same on every engine: the process opens the study's storage itself (any URL Optuna takes; the
default SQLite file lives in the sweep directory, which every worker sees) and, on rank 0 only:

- reports each epoch's objective (the metrics.csv row's `objective` column) to the trial and asks Optuna's
  pruner (`should_prune()`); a prune stops the run at its next optimizer step (`run.request_stop`);
- on the watch's `not_learning`, `divergence` or `nonfinite` events stops the run at once: a hopeless setting
  costs the steps the watch needs to see it, not the whole budget;
- at the end records the trial: COMPLETE with the best objective (summary.json's `best_val_acc1` for
  val_acc1), PRUNED with user attributes `pruned_by` (the event's kind and message, or the pruner) and
  `stopped_at_step` (the optimizer step it stopped at, of `planned_steps`), FAIL with the error; a run stopped
  by a signal stays RUNNING and resumes from its checkpoint when the sweep runs again;
- beats a heartbeat (a trial system attribute) while it trains, so a sweep started again can tell a trial
  whose process died (resume it) from one still running elsewhere (wait for it);
- writes RUN_DIR/trial.json: what `trainlab report` shows for the trial, without Optuna.

A prune decided but not yet acted on (the run was stopped by a signal first) is kept in the trial (system
attribute `trainlab:prune`) and carried out when the run resumes.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

OBJECTIVES = ("val_acc1", "val_acc5", "val_loss", "ema_val_acc1", "ema_val_loss", "train_acc1", "train_loss")
WATCH_PRUNES = ("not_learning", "divergence", "nonfinite")  # the watch's verdicts that a setting is hopeless
PRUNERS = ("median", "hyperband", "none")
TRIAL_FILE = "trial.json"
PENDING = "trainlab:prune"  # a prune decided, maybe not yet carried out
HEARTBEAT = "trainlab:heartbeat"  # unix time of the trial process's last beat
LAUNCH = "trainlab:launch"  # where the sweep launched the trial's process (engine, host, pid or job id)
ENDED = "trainlab:ended"  # unix time the trial's process ended with the trial still RUNNING (stopped by a signal)
HEARTBEAT_S = 30.0


def direction(objective: str) -> str:
    """A loss is minimised, anything else (an accuracy) maximised."""
    return "minimize" if "loss" in objective else "maximize"


def open_storage(url: str) -> Any:
    """Optuna's RDB storage for `url`; SQLite waits for a lock instead of failing when processes write at once."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def make_pruner(name: str, max_resource: Optional[int] = None) -> Any:
    """Optuna's pruner by name; a trial's steps are its epochs."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource or "auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


def best_value(objective: str, summary: dict, rows: list[dict]) -> Optional[float]:
    """The trial's value: the best epoch of its objective (summary.json's best_val_acc1 for val_acc1)."""
    if objective == "val_acc1" and isinstance(summary.get("best_val_acc1"), (int, float)):
        return float(summary["best_val_acc1"])
    values = [float(r[objective]) for r in rows if isinstance(r.get(objective), (int, float))
              and math.isfinite(float(r[objective]))]  # fmt: skip
    if not values:
        return None
    return min(values) if direction(objective) == "minimize" else max(values)


def trial_record(frozen: Any, study: str, objective: str) -> dict:
    """What RUN_DIR/trial.json holds: the trial as the study has it."""
    attrs = dict(frozen.user_attrs)
    return {
        "study": study, "number": frozen.number, "state": frozen.state.name, "objective": objective,
        "direction": direction(objective), "value": frozen.value, "params": dict(frozen.params),
        "intermediate": {str(k): v for k, v in sorted(frozen.intermediate_values.items())},
        "pruned_by": attrs.get("pruned_by"), "stopped_at_step": attrs.get("stopped_at_step"),
        "planned_steps": attrs.get("planned_steps"), "steps": attrs.get("steps"), "error": attrs.get("error"),
        "run_dir": attrs.get("run_dir"), "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip


def write_trial_file(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    from trainlab.paths import write_text_no_follow

    tmp = run_dir / (TRIAL_FILE + ".tmp")
    write_text_no_follow(tmp, json.dumps(record, indent=2, default=str) + "\n")  # never through a link
    tmp.replace(run_dir / TRIAL_FILE)


class OptunaTrial:
    """Reports a run to its Optuna trial and prunes it (Optuna's pruner, the watch's verdicts)."""

    def __init__(self, storage: str, study: str, trial: int, objective: str = "val_acc1", pruner: str = "median",
                 max_resource: Optional[int] = None, watch_prune: bool = True, heartbeat_s: float = HEARTBEAT_S):  # fmt: skip
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if pruner not in PRUNERS:
            raise ValueError(f"pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")
        self.url, self.study_name, self.number = str(storage), str(study), int(trial)
        self.objective, self.pruner_name, self.max_resource = objective, pruner, max_resource
        self.watch_prune, self.heartbeat_s = bool(watch_prune), float(heartbeat_s)
        self.active = False
        self.pruned_by: Optional[dict] = None
        self.stop_text: Optional[str] = None
        self.beating = threading.Event()

    # -- the run's hooks ---------------------------------------------------------------------------
    def on_train_start(self, run: Any) -> None:
        if not run.ctx.is_main:  # one process talks to the study; a stop on rank 0 stops every rank
            return
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = open_storage(self.url)
        self.study = optuna.load_study(study_name=self.study_name, storage=self.storage,
                                       pruner=make_pruner(self.pruner_name, self.max_resource))  # fmt: skip
        study_id = self.storage.get_study_id_from_name(self.study_name)
        self.trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        frozen = self.storage.get_trial(self.trial_id)
        if frozen.state.is_finished():
            run.log_event("sweep", "warning", f"trial {self.number} of study {self.study_name} is already "
                          f"{frozen.state.name}: this run reports nothing to it")  # fmt: skip
            return
        self.active = True
        self.trial = optuna.trial.Trial(self.study, self.trial_id)
        self.reported = set(frozen.intermediate_values)
        self.last_epoch = int(run.cfg.train.epochs)
        self.planned_steps = int(run.cfg.train.epochs) * int(run.steps_per_epoch)
        self.storage.set_trial_user_attr(self.trial_id, "run_dir", str(Path(run.run_dir).resolve()))
        self.storage.set_trial_user_attr(self.trial_id, "planned_steps", self.planned_steps)
        self._beat()
        threading.Thread(target=self._heartbeat, name="optuna-heartbeat", daemon=True).start()
        pending = frozen.system_attrs.get(PENDING)
        if pending:  # decided before a signal stopped the run: carry it out now
            self._prune(run, pending, record=False)

    def on_epoch_end(self, run: Any, row: dict) -> None:
        if not self.active:
            return
        value, epoch = row.get(self.objective), int(row["epoch"])
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            return  # no validation this epoch (eval.every), or a non-finite loss the watch speaks about
        if epoch not in self.reported:  # a resumed run validates no epoch twice, but say it only once anyway
            self.trial.report(float(value), epoch)
            self.reported.add(epoch)
        if self.pruned_by is None and epoch < self.last_epoch and self.pruner_name != "none" and self.trial.should_prune():
            self._prune(run, {"kind": "pruner", "pruner": self.pruner_name, "epoch": epoch,
                              "message": f"Optuna's {self.pruner_name} pruner at epoch {epoch}: {self.objective} "
                                         f"{float(value):.4g} against the other trials at that epoch"})  # fmt: skip

    def on_event(self, run: Any, event: dict) -> None:
        if not self.active or not self.watch_prune or self.pruned_by is not None:
            return
        if event.get("kind") in WATCH_PRUNES:
            rule = (event.get("data") or {}).get("rule")
            self._prune(run, {"kind": event["kind"], "rule": rule, "step": event.get("step"),
                              "epoch": event.get("epoch"), "message": event.get("message", "")})  # fmt: skip

    def on_train_end(self, run: Any, summary: dict) -> None:
        if not self.active:
            return
        self.beating.set()
        from optuna.trial import TrialState

        status, steps = summary.get("status"), int(run.trainer.global_step)
        try:
            self.storage.set_trial_user_attr(self.trial_id, "steps", steps)
            if status == "finished":
                value = best_value(self.objective, summary, list(run.metrics_rows))
                if value is None:
                    self._fail(f"the run finished without a value of {self.objective}")
                else:
                    self.study.tell(self.trial, value)
            elif status == "stopped" and self.pruned_by and summary.get("stop_reason") == f"callback: {self.stop_text}":
                self.storage.set_trial_user_attr(self.trial_id, "pruned_by", self.pruned_by)
                self.storage.set_trial_user_attr(self.trial_id, "stopped_at_step", steps)
                self.study.tell(self.trial, state=TrialState.PRUNED)
            elif status == "failed" and str(summary.get("error") or "").startswith("non-finite loss") and self.watch_prune:
                # watch.on_nonfinite=stop: the engine stopped at the first non-finite loss, a verdict like the watch's
                self.storage.set_trial_user_attr(self.trial_id, "pruned_by", {"kind": "nonfinite", "message": summary["error"]})
                self.storage.set_trial_user_attr(self.trial_id, "stopped_at_step", steps)
                self.study.tell(self.trial, state=TrialState.PRUNED)
            elif status == "failed":
                self._fail(str(summary.get("error") or "the run failed"))
            else:  # stopped by a signal (preemption, Ctrl-C): RUNNING, continued from its checkpoint later
                self.storage.set_trial_system_attr(self.trial_id, "trainlab:stopped", summary.get("stop_reason"))
                self.storage.set_trial_system_attr(self.trial_id, ENDED, time.time())
            write_trial_file(Path(run.run_dir), trial_record(self.storage.get_trial(self.trial_id), self.study_name,
                                                             self.objective))  # fmt: skip
        except Exception as exc:  # the storage went away: the sweep reconciles from the run dir when it can
            print(f"trainlab: warning: could not record trial {self.number} in {self.study_name}: {exc}", file=sys.stderr)

    # -- helpers -----------------------------------------------------------------------------------
    def _prune(self, run: Any, reason: dict, record: bool = True) -> None:
        self.pruned_by = reason
        label = reason.get("pruner", reason["kind"])
        self.stop_text = f"pruned by {label}" + (" pruner" if reason["kind"] == "pruner" else "")
        if record:
            self.storage.set_trial_system_attr(self.trial_id, PENDING, reason)
        run.request_stop(self.stop_text)

    def _fail(self, error: str) -> None:
        from optuna.trial import TrialState

        self.storage.set_trial_user_attr(self.trial_id, "error", error[:500])
        self.study.tell(self.trial, state=TrialState.FAIL)

    def _beat(self) -> None:
        self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT, time.time())

    def _heartbeat(self) -> None:
        while not self.beating.wait(self.heartbeat_s):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - the trial ended meanwhile, or the storage is away: beat again later
                continue
