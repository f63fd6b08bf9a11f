"""The signal SLURM sends before a job's time limit (and submitit's local executor before its timeout).

submitit reads SUBMITIT_PREEMPT_SIGNAL when it is imported (default USR2). trainlab turns SIGUSR1 into a
checkpoint and exit 143, so the sweep asks for USR1 unless the user chose a signal; the jobs inherit the
variable (sbatch exports the environment, the local executor copies it).
"""

from __future__ import annotations

import os

VARIABLE = "SUBMITIT_PREEMPT_SIGNAL"
TRAINLAB_STOPS_ON = "USR1"


def choose() -> str:
    os.environ.setdefault(VARIABLE, TRAINLAB_STOPS_ON)
    return os.environ[VARIABLE]
