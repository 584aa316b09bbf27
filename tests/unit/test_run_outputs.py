"""What a run leaves in its output folder: MLflow artifacts (completion tables, the model) under
it, never in `./mlruns` of the launch directory, and `replicas.json` marking every replica dead
once the run has shut down."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from trainer.config_loading import parse_config
from trainer.driver import Run
from trainer.tracking import artifact_root, open_tracker


def test_artifacts_of_a_local_store_go_under_the_output_folder(tmp_path, monkeypatch):
    import mlflow

    launch, out = tmp_path / "launch", tmp_path / "run"
    launch.mkdir()
    monkeypatch.chdir(launch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = parse_config({"trainer": {"output_dir": str(out)}})
    tracker = open_tracker(cfg.mlflow, out, run_name="r")
    tracker.table([{"step": 1, "completion": "12"}], "completions/step_000001.json")
    run_id = tracker.run_id
    tracker.end()
    client = mlflow.MlflowClient(tracking_uri=tracker.uri)
    exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert Path(exp.artifact_location.removeprefix("file://")).is_relative_to(out.resolve())
    tables = list(out.rglob("step_000001.json"))
    assert len(tables) == 1, sorted(str(p) for p in out.rglob("*"))
    assert not (launch / "mlruns").exists()


def test_only_database_stores_get_an_artifact_root():
    assert artifact_root("sqlite:////x/mlflow.db", Path("/o")) == str(Path("/o") / "mlartifacts")
    assert artifact_root("postgresql://h/db", Path("/o")) == str(Path("/o") / "mlartifacts")
    assert artifact_root("azureml://eastus.api.azureml.ms/mlflow/v1.0/x", Path("/o")) is None
    assert artifact_root("http://127.0.0.1:5000", Path("/o")) is None
    assert artifact_root("file:///x/mlruns", Path("/o")) is None


def test_replicas_json_marks_every_replica_dead_after_shutdown(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    before = [
        {"index": 0, "url": "http://127.0.0.1:8001", "pid": 11, "alive": True, "restarts": 0},
        {"index": 1, "url": "http://127.0.0.1:8002", "pid": 12, "alive": True, "restarts": 1},
    ]
    (out / "replicas.json").write_text(json.dumps(before))
    run = Run(parse_config({"trainer": {"output_dir": str(out)}}))
    asyncio.run(run.shutdown())
    after = json.loads((out / "replicas.json").read_text())
    assert after == [{**r, "alive": False} for r in before]


def test_shutdown_without_replicas_json_writes_none(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    asyncio.run(Run(parse_config({"trainer": {"output_dir": str(out)}})).shutdown())
    assert not (out / "replicas.json").exists()


def test_the_audit_log_and_completion_rows_carry_every_completions_version_spans(tmp_path):
    """A completion an in-flight update split (versions 3 then 4 from token 5) is recorded with
    both spans, next to its group's oldest version, in trained_prompts.jsonl and the table."""
    from trainer.orchestrator import Group, StepBatch
    from trainer.prompts import Prompt
    from trainer.run_files import RunFiles, completion_rows
    from trainer.types import ScoredSample

    def sample(i: int, versions: list[tuple[int, int]]) -> ScoredSample:
        return ScoredSample(
            "p", i, [1], [2, 3], [-1.0, -1.0], "stop", versions[0][0], 1.0, versions=versions
        )

    samples = [sample(0, [(3, 0), (4, 5)]), sample(1, [(4, 0)])]
    group = Group(0, Prompt("p", [1], [], {}), samples, 3, 0.0, 0.0, replica="u")
    RunFiles(tmp_path).record_trained(5, StepBatch(5, samples, [group], 1))
    [row] = [json.loads(x) for x in (tmp_path / "trained_prompts.jsonl").read_text().splitlines()]
    assert row["versions"] == [3]
    assert row["sample_versions"] == [[[[3, 0], [4, 5]], [[4, 0]]]]
    rows = completion_rows(5, StepBatch(5, samples, [group], 1))
    assert [r["versions"] for r in rows] == [[[3, 0], [4, 5]], [[4, 0]]]
