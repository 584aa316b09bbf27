"""Checkpoint folders on real files: the durable completion marker, resume taking the newest
*valid* checkpoint (skipping and logging corrupt ones), and the per-rank RNG state."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from trainer.checkpoints import latest_valid


def latest_checkpoint(output_dir, world_size=1):
    return latest_valid(output_dir / "checkpoints", world_size)


def _fake_checkpoint(root: Path, step: int, ranks: int = 1) -> Path:
    """The files a trainer save leaves (a DeepSpeed `state/` folder, one RNG file per rank) and
    the marker written last, as the driver wrote it before file manifests."""
    path = root / "checkpoints" / f"step-{step}"
    (path / "state").mkdir(parents=True)
    torch.save({"module": torch.randn(64, 64)}, path / "state" / "mp_rank_00_model_states.pt")
    (path / "latest").write_text("state")
    for r in range(ranks):
        torch.save({"torch": torch.get_rng_state()}, path / f"rng_state_rank{r}.pt")
    state = {"step": step, "cursor": {"position": step}, "version": step, "world_size": ranks}
    (path / "client_state.json").write_text(json.dumps(state))
    return path


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def test_a_truncated_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    _fake_checkpoint(tmp_path, 3)
    newest = _fake_checkpoint(tmp_path, 6)
    _truncate(newest / "state" / "mp_rank_00_model_states.pt")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-3"
    assert "step-6" in caplog.text and "mp_rank_00_model_states.pt" in caplog.text


def test_a_missing_rng_file_skips_the_checkpoint(tmp_path, caplog):
    _fake_checkpoint(tmp_path, 3, ranks=2)
    newest = _fake_checkpoint(tmp_path, 6, ranks=2)
    (newest / "rng_state_rank1.pt").unlink()
    assert latest_checkpoint(tmp_path).name == "step-3"
    assert "rng_state_rank1.pt" in caplog.text


def test_a_corrupt_only_checkpoint_is_an_error_naming_it_and_the_fix(tmp_path):
    only = _fake_checkpoint(tmp_path, 6)
    (only / "client_state.json").write_text('{"step": 6, "cur')  # a half-written marker
    from trainer.checkpoints import CheckpointError
    from trainer.config import ConfigError

    with pytest.raises(CheckpointError) as err:  # a clean, config-style error (exit 2)
        latest_checkpoint(tmp_path)
    assert isinstance(err.value, ConfigError)
    msg = str(err.value)
    assert "step-6" in msg and "client_state.json" in msg and "delete" in msg


def test_an_unfinished_save_is_not_a_candidate(tmp_path):
    _fake_checkpoint(tmp_path, 3)
    unfinished = _fake_checkpoint(tmp_path, 6)
    (unfinished / "client_state.json").unlink()  # killed before the marker: never complete
    assert latest_checkpoint(tmp_path).name == "step-3"
    (tmp_path / "checkpoints" / "step-3" / "client_state.json").unlink()
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints" / "step-x").mkdir()  # not ours: ignored, never parsed
    assert latest_checkpoint(tmp_path) is None


def test_the_marker_records_every_file_and_a_truncated_one_is_caught(tmp_path, caplog):
    from trainer.checkpoints import write_marker

    for step in (3, 6):
        path = _fake_checkpoint(tmp_path, step)
        state = json.loads((path / "client_state.json").read_text())
        (path / "client_state.json").unlink()
        write_marker(path, state)
    marker = json.loads((path / "client_state.json").read_text())
    assert marker["files"]["latest"] == len("state")
    assert set(marker["files"]) == {
        "latest",
        "rng_state_rank0.pt",
        "state/mp_rank_00_model_states.pt",
    }
    assert [p.name for p in path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    (path / "latest").write_text("")  # not a zip: only the recorded size can tell
    assert latest_checkpoint(tmp_path).name == "step-3"
    assert "latest has 0 bytes, the marker recorded 5" in caplog.text


def test_rng_state_round_trips_with_weights_only_and_a_missing_file_is_an_error(tmp_path):
    import numpy as np

    from trainer.rng_state import load_rng_state, save_rng_state

    random.seed(1), torch.manual_seed(1), np.random.seed(1)
    save_rng_state(str(tmp_path), rank=0)
    expected = (random.random(), torch.rand(3), np.random.rand())
    random.seed(2), torch.manual_seed(2), np.random.seed(2)
    load_rng_state(str(tmp_path), rank=0)
    got = (random.random(), torch.rand(3), np.random.rand())
    assert got[0] == expected[0] and torch.equal(got[1], expected[1]) and got[2] == expected[2]
    with pytest.raises(FileNotFoundError, match=r"rng_state_rank1\.pt"):
        load_rng_state(str(tmp_path), rank=1)


@pytest.mark.parametrize(
    "k,done,steps,says",
    [
        (None, 3, 10, "no checkpoint yet"),
        (4, 6, 10, "--resume continues after step 4 (steps 5-6 are trained again)"),
        (4, 4, 10, "--resume continues after step 4"),
        # interrupted in the final save: every step is checkpointed, only the save is left
        (10, 10, 10, "--resume saves the final model (no step is trained again)"),
    ],
)
def test_the_resume_hint_says_what_resume_redoes(k, done, steps, says):
    from trainer.checkpoints import resume_hint

    assert says in resume_hint(k, done, steps)
