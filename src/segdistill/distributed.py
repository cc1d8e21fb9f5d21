"""Which process this is when Lightning launches several (DDP on one node, SLURM)."""

from __future__ import annotations

import os


def is_rank_zero() -> bool:
    """True in the process that prints and writes shared files: rank 0, or the only one.

    Lightning sets `rank_zero_only.rank` from the launcher's environment when it is
    imported, and from the Trainer's rank (the attribute is added at run time, hence the
    getattr). Imported here, not at the top, so that the command line starts without
    Lightning; every caller runs after a training, when it is loaded anyway."""
    from lightning.pytorch.utilities import rank_zero_only

    rank: int = getattr(rank_zero_only, "rank", 0)
    return rank == 0


def print_once(message: str) -> None:
    """Print `message` from the first process only (once, however many train)."""
    if is_rank_zero():
        print(message)


def slurm_requeued() -> bool:
    """True in a SLURM job that runs again after a requeue (preemption, a node failure,
    `scontrol requeue`): SLURM counts its restarts in SLURM_RESTART_COUNT."""
    count = os.environ.get("SLURM_RESTART_COUNT", "").strip()
    return count.isdigit() and int(count) > 0
