"""Which process this is when Lightning launches several (DDP on one node, SLURM)."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_only


def is_rank_zero() -> bool:
    """True in the process that prints and writes shared files: rank 0, or the only one.

    Lightning sets `rank_zero_only.rank` from the launcher's environment (the attribute
    is added at run time, hence the getattr)."""
    rank: int = getattr(rank_zero_only, "rank", 0)
    return rank == 0
