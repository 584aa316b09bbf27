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
