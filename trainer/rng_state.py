"""A trainer rank's RNG state in its checkpoint: Python's, torch's, CUDA's and numpy's, saved and
restored so a resumed run draws the same random numbers as one that never stopped.

Owns: the RNG file's contents and its safe load (weights_only). Does not know: the rest of the
checkpoint (trainer.checkpoints owns its layout and `RNG_FILE`).
"""

from __future__ import annotations

import os
import random
from typing import Any

import torch

from trainer.checkpoints import RNG_FILE


def save_rng_state(path: str, rank: int) -> None:
    """This process's Python, torch, CUDA and numpy RNG states, as `path`'s file of `rank`."""
    rng: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    try:
        import numpy as np

        rng["numpy"] = np.random.get_state()
    except ImportError:  # numpy is optional for the engine itself
        pass
    torch.save(rng, os.path.join(path, RNG_FILE.format(rank=rank)))


def _numpy_globals() -> list[Any]:
    """What numpy's RNG state (an ndarray) needs from a weights_only torch.load."""
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_rng_state(path: str, rank: int) -> None:
    """Restore what save_rng_state wrote; FileNotFoundError if `rank` has no file there (resuming
    without it would silently change every later random draw)."""
    rng_file = os.path.join(path, RNG_FILE.format(rank=rank))
    if not os.path.isfile(rng_file):
        raise FileNotFoundError(
            f"{rng_file} is missing: trainer rank {rank} cannot restore its RNG state; resume "
            "with the pipeline.num_trainer_workers the checkpoint was saved with, or from another "
            "checkpoint"
        )
    # weights_only: unpickling only tensors, containers and numpy's state, never arbitrary code.
    with torch.serialization.safe_globals(_numpy_globals()):
        rng = torch.load(rng_file, weights_only=True)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "numpy" in rng:
        import numpy as np

        np.random.set_state(rng["numpy"])
