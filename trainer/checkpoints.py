"""Checkpoint folders: their layout, the durable completion marker, and which one a resume takes.

Owns: the layout `checkpoints/step-<N>/` (`state/`: DeepSpeed's engine files; `rng_state_rank<r>.pt`
per trainer rank; `client_state.json`: the marker, written last), flushing a checkpoint's files to
disk (`fsync_tree`, every rank after its save), writing the marker durably (temp file, fsync,
rename, directory fsync) with the size of every file, validating a checkpoint, selecting the newest
valid one (`latest_valid`) and pruning old ones; what `--resume` would redo after a stop
(`resume_hint`).
Does not know: what the files hold (trainer.engine writes and reads them), the run loop.

A folder without a marker is an unfinished save (killed mid-save): never a candidate, logged. A
folder with a marker that does not hold up (unreadable marker, a listed file missing or of another
size, a truncated torch file, a rank's RNG file missing) is corrupt: skipped, with the reason
logged, when an older valid checkpoint exists; an error naming each folder and reason otherwise
(resuming from nothing, or starting over beside it, would silently lose the run).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

from trainer.config import ConfigError

log = logging.getLogger(__name__)

CKPT_PREFIX = "step-"
MARKER = "client_state.json"
ENGINE_TAG = "state"
RNG_FILE = "rng_state_rank{rank}.pt"
_STEP_DIR = re.compile(rf"{CKPT_PREFIX}(\d+)")
_REQUIRED_KEYS = ("step", "cursor", "version")


class CheckpointError(ConfigError):
    """No checkpoint can be resumed although some claim to be complete (a clean error: the
    command line prints it and exits 2, as for a config problem)."""


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `step-<N>` folder under `root`, oldest first (others ignored)."""
    out = []
    for p in root.glob(f"{CKPT_PREFIX}*") if root.is_dir() else []:
        m = _STEP_DIR.fullmatch(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """Flush every file and folder under `path` to disk (torch.save and DeepSpeed do not)."""
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(folder))


def write_durable(path: Path, text: str) -> None:
    """Readers see the old file or the whole new one, also after a crash or power loss."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _files(path: Path) -> dict[str, int]:
    """{relative path: size} of the checkpoint's files, the marker and temp files aside."""
    out = {}
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name != MARKER and not f.name.startswith("."):
            out[f.relative_to(path).as_posix()] = f.stat().st_size
    return out


def write_marker(path: Path, state: dict[str, Any]) -> None:
    """Mark `path` complete: `state` plus every file's size, written durably. Call it last."""
    write_durable(path / MARKER, json.dumps({**state, "files": _files(path)}))


def read_marker(path: Path) -> dict[str, Any]:
    """The marker's state (ValueError if it does not parse or lacks a key)."""
    state = json.loads((path / MARKER).read_text(encoding="utf-8"))
    missing = [k for k in _REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{MARKER} lacks {missing}")
    return state


def _torch_file_problem(file: Path) -> str | None:
    """A torch zip archive cut short has no central directory (reads only the file's ends)."""
    with open(file, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # torch's default format; legacy pickles are not
    if is_zip and not zipfile.is_zipfile(file):
        return f"{file.name} is truncated (no zip central directory)"
    return None


def problems(path: Path, world_size: int) -> list[str]:
    """Why the marked checkpoint `path` cannot be resumed; [] if it can.

    `world_size`: the trainer ranks that will load it, unless the marker records its own.
    """
    try:
        state = read_marker(path)
    except (OSError, ValueError) as e:
        return [f"{MARKER} is unreadable ({e})"]
    out = []
    for rel, size in state.get("files", {}).items():  # old checkpoints have no list
        f = path / rel
        if not f.is_file():
            out.append(f"{rel} is missing")
        elif f.stat().st_size != size:
            out.append(f"{rel} has {f.stat().st_size} bytes, the marker recorded {size}")
    engine = path / ENGINE_TAG
    if not engine.is_dir() or not any(engine.iterdir()):
        out.append(f"the engine folder {ENGINE_TAG}/ is missing or empty")
    for rank in range(int(state.get("world_size", world_size))):
        if not (path / RNG_FILE.format(rank=rank)).is_file():
            out.append(f"{RNG_FILE.format(rank=rank)} (trainer rank {rank}'s RNG state) is missing")
    out += [p for f in sorted(path.rglob("*.pt")) if (p := _torch_file_problem(f))]
    return out


def latest_valid(root: Path, world_size: int = 1) -> Path | None:
    """The newest checkpoint under `root` that can be resumed; None if no save ever finished.

    Corrupt newer ones are skipped and logged; CheckpointError if every finished one is corrupt.
    """
    skipped: list[str] = []
    for _, path in reversed(step_dirs(root)):
        if not (path / MARKER).exists():
            log.info(
                "checkpoint %s has no %s (its save did not finish): not a candidate", path, MARKER
            )
            continue
        reasons = problems(path, world_size)
        if not reasons:
            if skipped:
                log.warning("resuming from %s, the newest valid checkpoint", path)
            return path
        log.warning("checkpoint %s skipped: %s", path, "; ".join(reasons))
        skipped.append(f"{path.name}: {'; '.join(reasons)}")
    if skipped:
        raise CheckpointError(
            f"no valid checkpoint under {root}: " + " | ".join(skipped) + ". Restore the files "
            "from a copy, or delete these folders to start the run over"
        )
    return None


def prune(root: Path, keep: int, newest: Path) -> None:
    """Delete the oldest checkpoints so that at most `keep` remain, `newest` among them."""
    old = [p for _, p in step_dirs(root) if p != newest]
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)


def resume_point(out: Path, resume: bool, world_size: int) -> Path | None:
    """The checkpoint a run in `out` continues from, None for a fresh run. ConfigError when
    --resume finds none, when a fresh run would start over beside finished checkpoints, or
    when the checkpoint was saved by another number of trainer ranks."""
    root = out / "checkpoints"
    if not resume:
        if any((p / MARKER).exists() for _, p in step_dirs(root)):
            raise ConfigError(
                f"trainer.output_dir {out} already holds checkpoints: pass --resume to continue "
                "that run, or choose another output_dir"
            )
        return None
    ckpt = latest_valid(root, world_size)
    if ckpt is None:
        raise ConfigError(f"--resume: no complete checkpoint under {root}")
    saved = read_marker(ckpt).get("world_size", world_size)
    if saved != world_size:
        raise ConfigError(
            f"{ckpt} was saved by {saved} trainer ranks, this run has "
            f"pipeline.num_trainer_workers={world_size}: resume with {saved} (each rank "
            "restores its own optimizer shard and RNG state)"
        )
    return ckpt


def resume_hint(checkpoint_step: int | None, steps_done: int, steps: int) -> str:
    """What `--resume` would do after a run of `steps` steps stopped with `steps_done` trained
    and its newest complete checkpoint at `checkpoint_step` (printed on Ctrl-C)."""
    k, done = checkpoint_step, steps_done
    if k is None:
        return (
            f"interrupted after {done} steps with no checkpoint yet: --resume has nothing to "
            "continue from; run the same command again to start over"
        )
    if k == steps:  # every step checkpointed: stopped in (or just before) the final save
        return (
            f"all {k} steps are trained and checkpointed, the final model may be incomplete: "
            "--resume saves the final model (no step is trained again)"
        )
    redo = f" (steps {k + 1}-{done} are trained again)" if done > k else ""
    return f"the last checkpoint is step {k}: --resume continues after step {k}{redo}"
