"""`trainlab sweep --search optuna`: an Optuna study whose trials are ordinary trainlab runs.

    trainlab sweep CONFIG --search optuna --trials 16 --space optim.lr=1e-5:1:log --space optim.name=sgd,adamw \
        --objective val_acc1 --dir runs/lr [--storage sqlite:///runs/lr.db --study lr-search] [--engine ray]

The driver asks the study for a trial (TPE, `--sampler-seed`), writes its parameters as overrides and starts
`trainlab train` in SWEEP_DIR/trial-NNN through the engine, with trial.py's callback installed; the callback
reports every epoch to the trial and prunes it (Optuna's pruner, the watch's verdicts). `--parallel` trials
run at a time. When a process ends, the driver checks the trial's state and settles what the process could
not (it exited without recording: finished -> COMPLETE from the run dir, failed -> FAIL with its error).

Running the same command again continues the study: finished trials stay; a trial still RUNNING in the study
is looked at before anything new is asked: its process ended (stopped by a signal, the driver saw it end) or
fell silent (no heartbeat for STALE_AFTER_S, and the engine does not know it as queued) -> started again in the
same run dir, which resumes from its checkpoint, under the same trial number (no duplicate); its process is
still beating (running elsewhere) -> waited for.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from trainlab.errors import TrainlabError, UsageError
from trainlab.report.read import load_run
from trainlab.report.search import ranking_markdown, ranking_text
from trainlab.state.lock import is_held
from trainlab.sweep import grid as grid_mod
from trainlab.sweep.engines import Engine, EngineOptions, make_engine, require
from trainlab.sweep.jobs import STOPPED, Job, Result, describe_exit, last_line
from trainlab.sweep.lock import SweepLock
from trainlab.sweep.plan import PlannedRun, load_run_config, with_callback
from trainlab.sweep.space import SearchKey, text, validate_space
from trainlab.sweep.trial import (
    ENDED,
    HEARTBEAT,
    LAUNCH,
    OBJECTIVES,
    PRUNERS,
    best_value,
    direction,
    make_pruner,
    open_storage,
    trial_record,
    write_trial_file,
)  # fmt: skip

STALE_AFTER_S = 180.0  # a RUNNING trial silent this long (no heartbeat, no launch) has no live process
POLL_S = 5.0
CALLBACK = "trainlab.sweep.trial:OptunaTrial"


@dataclass
class SearchSpec:
    space: list[SearchKey]
    trials: int = 16
    objective: str = "val_acc1"
    pruner: str = "median"
    storage: Optional[str] = None  # None: sqlite in the sweep dir
    study: Optional[str] = None  # None: the sweep dir's name
    sampler_seed: Optional[int] = None
    watch_prune: bool = True
    stale_after_s: float = STALE_AFTER_S

    def record(self) -> dict:
        """What sweep.json and the study keep of the search (a re-run must search the same space)."""
        return {"kind": "optuna", "space": {k.key: k.spec for k in self.space}, "objective": self.objective,
                "direction": direction(self.objective), "pruner": self.pruner, "watch_prune": self.watch_prune,
                "sampler_seed": self.sampler_seed, "trials": self.trials}  # fmt: skip


def trial_name(number: int) -> str:
    return f"trial-{number:03d}"


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def shared_url(url: str) -> str:
    """The storage as every trial's process must reach it: an SQLite file by its absolute path (a trial may
    start in another folder), never an in-memory database (each process would get its own)."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if not path or path.startswith(":memory:"):
            raise UsageError(f"--storage {url}: an in-memory database is not shared with the trials' processes; "
                             "give a file, e.g. sqlite:///runs/study.db")  # fmt: skip
        if not path.startswith("/"):
            return f"sqlite:///{Path(path).resolve()}"
    return url


def check_storage(url: str) -> Any:
    """Open a storage the user named before the sweep writes anything; one line if Optuna cannot."""
    try:
        return open_storage(url)
    except Exception as exc:  # sqlalchemy's errors for a bad URL, an unknown driver, a server that is not there
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--storage {url}: Optuna cannot open it: {reason}") from None


def check_spec(spec: SearchSpec, options: EngineOptions) -> None:
    if spec.trials < 1:
        raise UsageError(f"--trials {spec.trials}: give 1 or more")
    if spec.objective not in OBJECTIVES:
        raise UsageError(f"--objective {spec.objective}: choose one of {', '.join(OBJECTIVES)} (a metrics.csv column)")
    if spec.pruner not in PRUNERS:
        raise UsageError(f"--pruner {spec.pruner}: choose one of {', '.join(PRUNERS)}")
    if options.parallel is not None and options.parallel < 1:
        raise UsageError(f"--parallel {options.parallel}: give 1 or more")


def run_search(
    config: Optional[str],
    overrides: list[str],
    sweep_dir: str | Path,
    spec: SearchSpec,
    engine: str | Engine = "local",
    options: Optional[EngineOptions] = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Run (or continue) a search. 0 when the study has its trials, each COMPLETE or PRUNED; 1 when a trial
    failed or was stopped before its end (the same command continues it); 130 when interrupted."""
    options = options or EngineOptions()
    require("optuna", "--search optuna")
    check_spec(spec, options)
    config, sweep_dir = grid_mod.portable_paths(engine, config, Path(sweep_dir))
    from trainlab.config import load_config
    from trainlab.paths import check_output_dir

    check_output_dir(sweep_dir, "--dir", UsageError)
    validate_space(spec.space, config, overrides)
    try:
        base = load_config(config, overrides)
    except TrainlabError as exc:
        raise type(exc)(f"sweep: {exc} (no trial was started)") from None
    url = shared_url(spec.storage) if spec.storage else default_storage(sweep_dir)
    if spec.storage:
        check_storage(url)
    options.folder = options.folder or sweep_dir / "jobs"
    runner = engine if isinstance(engine, Engine) else make_engine(engine, options)
    runner.open()
    try:
        probe = grid_mod.make_job(config, overrides, PlannedRun(trial_name(0), {}, {}), sweep_dir, base)
        runner.check(probe)  # e.g. train.device=cuda on a cluster without GPUs: before any trial
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with SweepLock(sweep_dir):
            search = Search(config, overrides, sweep_dir, spec, runner, url, int(base.train.epochs), echo)
            return search.run()
    finally:
        runner.close()


@dataclass
class InFlight:
    number: int
    job: Job
    resumed: bool = False


@dataclass
class Search:
    config: Optional[str]
    overrides: list[str]
    sweep_dir: Path
    spec: SearchSpec
    runner: Engine
    url: str
    epochs: int
    echo: Callable[[str], None]
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the study -------------------------------------------------------------------------------
    def open_study(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per trial
        self.storage = check_storage(self.url)
        name = self.spec.study or self.sweep_dir.name
        self.parallel = self.runner.options.parallel or 1
        sampler = optuna.samplers.TPESampler(seed=self.spec.sampler_seed, constant_liar=self.parallel > 1)
        existing = name in optuna.get_all_study_names(self.storage)
        self.study = optuna.create_study(study_name=name, storage=self.storage, sampler=sampler, load_if_exists=True,
                                         direction=direction(self.spec.objective),
                                         pruner=make_pruner(self.spec.pruner, self.epochs))  # fmt: skip
        self.study_id = self.storage.get_study_id_from_name(name)
        mine = {"space": {k.key: k.spec for k in self.spec.space}, "objective": self.spec.objective}
        if existing:
            kept = self.study.user_attrs.get("trainlab")
            if kept is None:
                raise UsageError(f"study {name} in {self.url} was not made by trainlab sweep; give another --study")
            for what, flag in (("space", "--space"), ("objective", "--objective")):
                if kept.get(what) != mine[what]:
                    raise UsageError(f"study {name} was searched with {flag} {_show(kept.get(what))}, not "
                                     f"{_show(mine[what])}; give the same {flag} to continue it, or a new --study")  # fmt: skip
        else:
            self.study.set_user_attr("trainlab", {**mine, "config": self.config, "overrides": self.overrides,
                                                  "sweep_dir": str(self.sweep_dir.resolve())})  # fmt: skip
        self.distributions = {k.key: k.distribution() for k in self.spec.space}

    def trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def frozen(self, number: int) -> Any:
        return self.storage.get_trial(self.trial_id(number))

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def started_count(self) -> int:
        from optuna.trial import TrialState

        return sum(1 for t in self.trials() if t.state != TrialState.WAITING)

    def classify(self, frozen: Any, now: Optional[float] = None) -> str:
        """A RUNNING trial found at start: 'resume' (no process of it is alive) or 'wait' (one may be).

        The signs, most certain first: its process ended with the trial RUNNING (stopped by a signal; recorded by
        the run or the sweep that saw it) -> resume; the engine knows its job as queued or running -> wait; a
        process holds its run dir's lock -> wait; launched moments ago (still starting) -> wait; its run dir's
        lock is there and free -> resume; else its heartbeat decides (a run dir whose lock cannot be seen)."""
        now = time.time() if now is None else now
        attrs = frozen.system_attrs
        launched = float((attrs.get(LAUNCH) or {}).get("time") or 0.0)
        ended = float(attrs.get(ENDED) or 0.0)
        if ended and ended >= launched:
            return "resume"
        if self.runner.alive(attrs.get(LAUNCH) or {}) is True:
            return "wait"
        run_dir = Path(frozen.user_attrs.get("run_dir") or self.sweep_dir / trial_name(frozen.number))
        held = is_held(run_dir) if run_dir.is_dir() else None
        if held:
            return "wait"
        if now - launched < self.spec.stale_after_s:
            return "wait"
        if held is False:
            return "resume"
        return "wait" if now - float(attrs.get(HEARTBEAT) or 0.0) < self.spec.stale_after_s else "resume"

    # -- one trial as a run ------------------------------------------------------------------------
    def planned(self, number: int, params: dict[str, Any]) -> PlannedRun:
        values = {k.key: text(params[k.key]) for k in self.spec.space if k.key in params}
        return PlannedRun(trial_name(number), dict(values), dict(values))

    def job(self, number: int, params: dict[str, Any]) -> Job:
        planned = self.planned(number, params)
        run_dir = self.sweep_dir / planned.name
        cfg = load_run_config(self.config, self.overrides, planned, run_dir)
        entry = {"target": CALLBACK, "storage": self.url, "study": self.study.study_name, "trial": number,
                 "objective": self.spec.objective, "pruner": self.spec.pruner, "max_resource": self.epochs,
                 "watch_prune": self.spec.watch_prune}  # fmt: skip
        planned.extra = [with_callback(cfg, entry)]
        return grid_mod.make_job(self.config, self.overrides, planned, self.sweep_dir, cfg)

    def launch(self, pool: ThreadPoolExecutor, in_flight: dict[Future, InFlight], number: int, resumed: bool) -> None:
        from optuna.trial import TrialState

        frozen = self.frozen(number)
        try:
            job = self.job(number, frozen.params)
        except TrainlabError as exc:  # this trial's values do not make a valid config (a rule across keys)
            self.storage.set_trial_user_attr(self.trial_id(number), "error", str(exc))
            self.study.tell(number, state=TrialState.FAIL)
            self.say(f"[trial {number}] failed before it started: {exc}")
            return
        trial_id = self.trial_id(number)
        self.storage.set_trial_user_attr(trial_id, "run_dir", str(job.run_dir.resolve()))
        self.storage.set_trial_system_attr(trial_id, LAUNCH, {"engine": self.runner.name, "host": socket.gethostname(),
                                                              "time": time.time()})  # fmt: skip
        grid_mod.prepare(job.run_dir)
        self.write_spec()
        future = pool.submit(self.runner.run, job, lambda j, where, n=number, r=resumed: self.started(n, j, where, r))
        in_flight[future] = InFlight(number, job, resumed)

    def started(self, number: int, job: Job, where: str, resumed: bool) -> None:
        info = self.runner.launch_info(job)
        if info:
            launch = dict(self.frozen(number).system_attrs.get(LAUNCH) or {}, **info)
            self.storage.set_trial_system_attr(self.trial_id(number), LAUNCH, launch)
        what = "resumed" if resumed else "started"
        params = " ".join(f"{k}={v}" for k, v in self.planned(number, self.frozen(number).params).values.items())
        self.say(f"[trial {number}] {what}{where}: {params}, log {job.out_path}")

    def settle(self, flight: InFlight, result: Result) -> str:
        """The trial's state once its process ended; what the process could not record, recorded here."""
        from optuna.trial import TrialState

        number, job = flight.number, flight.job
        frozen = self.frozen(number)
        trial_id = self.trial_id(number)
        if frozen.state == TrialState.RUNNING:
            code = result.returncode
            if code == 0:  # finished, but the trial was not told (its storage was away, or it had finished before)
                run = load_run(job.run_dir)
                value = best_value(self.spec.objective, run.summary, run.metrics)
                if value is None:
                    self.storage.set_trial_user_attr(trial_id, "error", f"no {self.spec.objective} in {job.run_dir}")
                    self.study.tell(number, state=TrialState.FAIL)
                else:
                    self.study.tell(number, value)
            elif code == STOPPED:  # stopped by a signal at a checkpoint: RUNNING, continued by the next sweep
                self.storage.set_trial_system_attr(trial_id, ENDED, time.time())
            else:
                message = result.message if code is None else last_line(job)
                self.storage.set_trial_user_attr(trial_id, "error", f"{describe_exit(code)}: {message}"[:500])
                self.study.tell(number, state=TrialState.FAIL)
        frozen = self.frozen(number)
        write_trial_file(job.run_dir, trial_record(frozen, self.study.study_name, self.spec.objective))
        self.say(f"[trial {number}] {self.describe(frozen, result)}")
        return frozen.state.name

    def describe(self, frozen: Any, result: Result) -> str:
        state, attrs = frozen.state.name, frozen.user_attrs
        if state == "COMPLETE":
            best = ""
            try:
                best = " (best so far)" if self.study.best_trial.number == frozen.number else ""
            except ValueError:
                pass
            return f"finished in {result.seconds:.1f}s: {self.spec.objective} {frozen.value:.4g}{best}"
        if state == "PRUNED":
            why = attrs.get("pruned_by") or {}
            at = f" at step {attrs.get('stopped_at_step')} of {attrs.get('planned_steps')}" if attrs.get("stopped_at_step") else ""
            return f"pruned{at} by {why.get('pruner', why.get('kind', '?'))}: {str(why.get('message', ''))[:160]}"
        if state == "FAIL":
            return f"failed: {attrs.get('error', describe_exit(result.returncode))}"
        return f"stopped ({describe_exit(result.returncode)}); the same command continues it from its checkpoint"

    def say(self, line: str) -> None:
        with self.lock:
            self.echo(line)

    def write_spec(self) -> None:
        runs = [self.planned(t.number, t.params) for t in sorted(self.trials(), key=lambda t: t.number)
                if t.params]  # fmt: skip
        search = {**self.spec.record(), "storage": self.url, "study": self.study.study_name}
        grid_mod.write_spec(self.sweep_dir, self.config, {}, self.overrides, runs, self.runner.name, search)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        from optuna.trial import TrialState

        self.open_study()
        found = [t for t in self.trials() if t.state == TrialState.RUNNING]
        resume: deque[int] = deque()
        waiting: set[int] = set()
        for t in found:
            (resume.append if self.classify(t) == "resume" else waiting.add)(t.number)
        done = {s: sum(1 for t in self.trials() if t.state.name == s) for s in ("COMPLETE", "PRUNED", "FAIL")}
        self.echo(f"sweep {self.sweep_dir}: study {self.study.study_name} in {self.url}: "
                  f"{done['COMPLETE']} complete, {done['PRUNED']} pruned, {done['FAIL']} failed, "
                  f"{len(resume)} to resume, {len(waiting)} running elsewhere; {self.spec.trials} trials wanted, "
                  f"{self.parallel} at a time ({self.runner.name} engine)")  # fmt: skip
        for number in sorted(waiting):
            self.echo(f"[trial {number}] running elsewhere (its heartbeat is recent): waiting for it")
        self.write_spec()
        in_flight: dict[Future, InFlight] = {}
        outcomes: list[str] = []
        interrupted = False
        pool = ThreadPoolExecutor(max_workers=self.parallel)
        try:
            while True:
                while len(in_flight) + len(waiting) < self.parallel and not self.runner.stopping.is_set():
                    if resume:
                        self.launch(pool, in_flight, resume.popleft(), resumed=True)
                    elif self.started_count() < self.spec.trials:
                        trial = self.study.ask(self.distributions)
                        self.launch(pool, in_flight, trial.number, resumed=False)
                    else:
                        break
                if not in_flight and not waiting:
                    break
                if in_flight:
                    finished, _ = wait(list(in_flight), timeout=POLL_S if waiting else None, return_when=FIRST_COMPLETED)
                else:
                    finished = set()
                    time.sleep(POLL_S)
                for future in finished:
                    outcomes.append(self.settle(in_flight.pop(future), future.result()))
                for number in list(waiting):
                    frozen = self.frozen(number)
                    if frozen.state.is_finished():
                        waiting.discard(number)
                        self.say(f"[trial {number}] {self.describe(frozen, Result(None))} (ran elsewhere)")
                    elif self.classify(frozen) == "resume":
                        waiting.discard(number)
                        resume.append(number)
        except KeyboardInterrupt:
            interrupted = True
            self.echo("sweep interrupted: waiting for the running trials to stop; run the same command to continue")
            self.runner.interrupt()
            for future, flight in list(in_flight.items()):
                outcomes.append(self.settle(flight, future.result()))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return self.finish(interrupted)

    def finish(self, interrupted: bool) -> int:
        self.write_spec()
        ranking = ranking_markdown(self.sweep_dir)
        grid_mod.write_tables(self.sweep_dir, extra=ranking)
        self.echo("")
        self.echo(ranking_text(self.sweep_dir).rstrip())
        self.echo(f"\nstudy: optuna.load_study(study_name={self.study.study_name!r}, storage={self.url!r})")
        self.echo(f"tables: {self.sweep_dir / 'sweep.md'}  {self.sweep_dir / 'sweep.csv'}  "
                  f"(report: trainlab report {self.sweep_dir})")  # fmt: skip
        states = [t.state.name for t in self.trials()]
        if interrupted:
            return 130
        failed, running = states.count("FAIL"), states.count("RUNNING")
        if failed or running:
            parts = [f"{failed} failed"] if failed else []
            parts += [f"{running} stopped before the end (the same command continues them)"] if running else []
            self.echo(f"{len(states)} trials: " + ", ".join(parts))
            return 1
        return 0


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
