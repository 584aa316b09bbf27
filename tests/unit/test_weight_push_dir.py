"""The filesystem weight pusher on a real folder: it deletes only the version folders it wrote,
never an unrelated folder that happens to start with `v` (seen: `validation/`, `venv/`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from sampler.weights.sender import FilesystemWeightPusher


class FakeReplicas:
    """Stands in for SamplerClient: every replica accepts the path it is told to load."""

    urls = ["http://replica-0"]

    def __init__(self) -> None:
        self.loaded: list[dict] = []

    async def admin_post(self, url: str, path: str, body: dict, timeout_s: float) -> dict:
        assert Path(body["path"], "model-00000.safetensors").is_file()
        self.loaded.append(body)
        return {"ok": True}


def _push(pusher: FilesystemWeightPusher, version: int) -> dict[str, float]:
    weights = [("w", torch.full((4,), float(version))), ("b", torch.zeros(2))]
    return asyncio.run(pusher.push(weights, version))


def test_cleanup_deletes_only_the_version_folders_the_pusher_wrote(tmp_path: Path) -> None:
    for name in ("validation", "venv", "v3", "v2-notes", "v10.bak"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("not the pusher's")
    (tmp_path / "v9").write_text("a file, not a folder")
    replicas = FakeReplicas()
    pusher = FilesystemWeightPusher(replicas, str(tmp_path), 1 << 20, timeout_s=5)
    _push(pusher, 1)
    _push(pusher, 2)
    assert not (tmp_path / "v1").exists()  # the pusher's own older version
    assert (tmp_path / "v2" / "model-00000.safetensors").is_file()
    for name in ("validation", "venv", "v3", "v2-notes", "v10.bak"):
        assert (tmp_path / name / "keep.txt").read_text() == "not the pusher's", name
    assert (tmp_path / "v9").is_file()
    assert [b["version"] for b in replicas.loaded] == [1, 2]


def test_a_foreign_folder_with_the_versions_name_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "v4").mkdir()
    (tmp_path / "v4" / "mine.txt").write_text("user data")
    pusher = FilesystemWeightPusher(FakeReplicas(), str(tmp_path), 1 << 20, timeout_s=5)
    with pytest.raises(RuntimeError, match=r"pipeline\.weight_sync_dir"):
        _push(pusher, 4)
    assert (tmp_path / "v4" / "mine.txt").read_text() == "user data"


def test_shards_follow_the_one_bucketing_rule(tmp_path: Path) -> None:
    """One shard per bucket of `weight_buckets`: a layer is never split across two shards."""
    from safetensors import safe_open

    from sampler.weights.buckets import weight_buckets

    names = ["embed", "model.layers.0.q", "model.layers.0.k", "model.layers.1.q", "lm_head"]
    weights = [(n, torch.full((10,), float(i))) for i, n in enumerate(names)]  # 40 B each
    pusher = FilesystemWeightPusher(FakeReplicas(), str(tmp_path), 128, timeout_s=5)
    asyncio.run(pusher.push(weights, 1))
    shards = []
    for f in sorted((tmp_path / "v1").glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as g:
            shards.append(sorted(g.keys()))  # noqa: SIM118 (safe_open is not a dict)
    expected = [sorted(n for n, _ in b) for b in weight_buckets(weights, lambda e: 40, 128)]
    assert shards == expected == [["embed"], ["model.layers.0.k", "model.layers.0.q"],
                                  ["lm_head", "model.layers.1.q"]]  # fmt: skip
