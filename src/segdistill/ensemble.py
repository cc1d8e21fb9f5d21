"""Training the members of a deep ensemble into one ensemble directory.

An ensemble directory holds one run directory per member, `member_00`, `member_01`, ...
Member i is trained with seed + i (its own random initialisation, data order and
augmentation) and the i-th value (cycling) of every list in `ensemble.vary`. Members are
independent, so they can train in parallel: one process per member (`segdistill ensemble
--member I`, e.g. `--member $SLURM_ARRAY_TASK_ID` in a SLURM array). A finished member
writes `member_XX/member.json` and is skipped on a re-run of the same config (another
config is refused, as `--resume` refuses it); an interrupted one resumes from
its last checkpoint. After each member, `manifest.json` (`MANIFEST_FILE`, which
`Ensemble.from_manifest` reads) is rebuilt from the finished members among the planned
ones (`member_00` to `member_{N-1}` for `ensemble.members` N) under a file lock and
replaced atomically, so parallel members never drop each other.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from segdistill.checkpoints import CONFIG_FILE, weights_path
from segdistill.config import (
    SAME_RECIPE_MAY_CHANGE,
    SegConfig,
    format_differences,
    load_config,
    network_differences,
    replace_values,
)
from segdistill.defaults import RESUME_CHECKPOINT
from segdistill.distributed import is_rank_zero, print_once
from segdistill.errors import ConfigError
from segdistill.jsonfiles import write_json
from segdistill.models.teachers import MANIFEST_FILE
from segdistill.output_paths import waiting_lock
from segdistill.train import train

MEMBER_FILE = "member.json"
MEMBER_PREFIX = "member_"


def finished_members(ensemble_dir: Path) -> list[tuple[int, Path]]:
    """(index, member.json) of every finished member, by index; folders not named
    member_<number> (a member_old/ set aside) are not members."""
    found = []
    for marker in ensemble_dir.glob(f"{MEMBER_PREFIX}*/{MEMBER_FILE}"):
        number = marker.parent.name.removeprefix(MEMBER_PREFIX)
        if number.isdigit():
            found.append((int(number), marker))
    return sorted(found)


def member_variations(cfg: SegConfig, index: int) -> dict[str, Any]:
    """Member `index`'s value of every `ensemble.vary` key (the lists cycle)."""
    return {key: choices[index % len(choices)] for key, choices in cfg.ensemble.vary.items()}


def member_config(cfg: SegConfig, ensemble_dir: Path, index: int) -> SegConfig:
    """Member `index`'s config: seed + index, its run directory and its variations (and,
    with `ensemble.same_init`, the ensemble's initial weights)."""
    values: dict[str, Any] = {
        "seed": cfg.seed + index,
        "run.dir": str(ensemble_dir / f"{MEMBER_PREFIX}{index:02d}"),
        **member_variations(cfg, index),
    }
    if cfg.ensemble.same_init:
        values["init_seed"] = cfg.seed if cfg.init_seed is None else cfg.init_seed
    return replace_values(cfg, values, f"ensemble member {index}")


def train_member(cfg: SegConfig, ensemble_dir: Path, index: int) -> None:
    """Train member `index` unless it finished before (resume it if it was interrupted)."""
    member_cfg = member_config(cfg, ensemble_dir, index)
    member_dir = member_cfg.run.path()
    check_finished_members(cfg, ensemble_dir)
    if (member_dir / MEMBER_FILE).is_file():
        print_once(f"{member_dir}: finished before, skipped")
        return
    train(member_cfg, resume=(member_dir / RESUME_CHECKPOINT).is_file())
    if is_rank_zero():
        entry = {
            "name": member_dir.name,
            # Relative to the ensemble directory, like every path in the manifest.
            "checkpoint": weights_path(member_dir).relative_to(ensemble_dir).as_posix(),
            "seed": member_cfg.seed,
            "variations": member_variations(cfg, index),
            "model": dataclasses.asdict(member_cfg.model),
            "num_classes": member_cfg.data.num_classes,
        }
        write_json(member_dir / MEMBER_FILE, entry)


def check_finished_members(cfg: SegConfig, ensemble_dir: Path) -> None:
    """ConfigError when a finished member was trained with another config than `cfg` gives
    it now (listing the differences): a member of another recipe or data set would join the
    ensemble, whether it is skipped or a new member trains beside it (`--member I`). The
    ensemble may grow (`ensemble.members`), and the loader workers may differ."""
    for index, marker in finished_members(ensemble_dir):
        saved = marker.parent / CONFIG_FILE
        now = member_config(cfg, ensemble_dir, index)
        changed = network_differences(load_config(saved), now, ignore=SAME_RECIPE_MAY_CHANGE)
        if changed:
            raise ConfigError(
                f"{marker.parent} finished with another config ({format_differences(changed)}; "
                f"compared with {saved}): set them back, or train the ensemble into a new "
                "directory"
            )


def write_manifest(ensemble_dir: Path, planned: int) -> tuple[int, list[str]]:
    """Rebuild `manifest.json` from the entries of the finished members among the
    `planned` (member_00 to member_{planned-1}). Returns their number and the names of
    the finished members beyond them (after `--members` was lowered), which stay on disk
    but out of the ensemble.

    The lock serialises the scan and the write of parallel members: without it, one could
    write a scan made before another member finished, after that member's own write.
    """
    with waiting_lock(ensemble_dir / ".manifest.lock"):
        finished = finished_members(ensemble_dir)
        entries = [json.loads(path.read_text()) for index, path in finished if index < planned]
        manifest = {"planned_members": planned, "members": entries}
        write_json(ensemble_dir / MANIFEST_FILE, manifest)
    return len(entries), [path.parent.name for index, path in finished if index >= planned]
