"""MLflow tracking against a real local sqlite store: metrics, tables, and the final chat model
that `mlflow.pyfunc.load_model` loads and answers a chat prompt with."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_tracker_logs_and_final_model_answers_chat(tmp_path, tiny_model_dir, monkeypatch):
    import os

    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # outside Azure ML: the local store

    from trainer.tracking import Tracker, pip_requirements, tracking_uri

    uri = tracking_uri(None, str(tmp_path))
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    t = Tracker(uri, "exp", "run-a", artifact_root=str(tmp_path / "artifacts"))
    t.metrics({"reward": 0.5, "rewards/char_class/mean": 0.25, "bad": float("nan")}, step=1)
    t.metrics({"reward": 0.75}, step=2)
    t.table([{"step": 2, "completion": "123", "reward": 1.0}], "completions/step_000002.json")
    model_uri = t.log_model(str(tiny_model_dir), pip_requirements())
    run_id = t.run_id
    t.end()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # this run's store does not leak to the next run

    client = mlflow.MlflowClient(tracking_uri=uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "reward")] == [
        (1, 0.5),
        (2, 0.75),
    ]
    assert client.get_metric_history(run_id, "bad") == []  # NaN is skipped, not logged as garbage
    assert "completions" in {a.path for a in client.list_artifacts(run_id)}
    # a resumed tracker continues the same run
    t2 = Tracker(uri, "exp", None, run_id=run_id)
    t2.metrics({"reward": 1.0}, step=3)
    t2.end()
    assert [m.step for m in client.get_metric_history(run_id, "reward")] == [1, 2, 3]

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(model_uri)
    reply = model.predict(
        {"messages": [{"role": "user", "content": "Reply with digits only."}], "max_tokens": 8}
    )
    reply = reply[0] if isinstance(reply, list) else reply
    content = reply["choices"][0]["message"]["content"]
    assert isinstance(content, str) and reply["choices"][0]["message"]["role"] == "assistant"
    local = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "dl"))
    # the model's files live under the experiment's artifact root, not ./mlruns of the cwd
    assert list((tmp_path / "artifacts").rglob("model.safetensors")), "model not in artifact root"
    assert "transformers==" in (Path(local) / "requirements.txt").read_text()
