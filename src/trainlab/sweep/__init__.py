"""Sweeps: many `trainlab train` runs, planned here and run by an engine (local processes, Ray tasks, SLURM jobs).

    plan.py           grids: the cartesian product, run names, every run's config validated before launch
    space.py          `--space key=low:high[:log|:int]` / `key=a,b,c`, checked against the config schema
    grid.py           a grid through an engine, the comparison tables (sweep.md, sweep.csv)
    optuna_search.py  `--search optuna`: the study, its trials as runs, continuing a study after a stop
    trial.py          the callback that links one training process to its Optuna trial (reports, prunes)
    jobs.py           one run as a job: the `trainlab train` command, its process, its logs and outcome
    lock.py           one driver per sweep directory
    engines/          local (a process pool), ray (one task per run), submitit (one SLURM job per run)

This wing sits between the commands and the training code, and imports neither train/ nor doctor/: a sweep
launches `trainlab train` processes and reads the run directories they write (report/).
"""
