"""MLflow tracking for the driver (the only process that logs).

Owns: choosing the tracking URI (AML's ambient one inside a job, else a local sqlite store under
output_dir) and, for a local store, the artifact folder (output_dir/mlartifacts, never ./mlruns
of the launch directory), starting/resuming the run, logging params/metrics/artifacts, and the final MLflow
model. Does not know: what the metrics mean.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def tracking_uri(configured: str | None, output_dir: str) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):  # set by Azure ML inside a job
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


# Stores that keep only metadata: MLflow's default artifact root for them is ./mlruns of the
# process's working directory, so two runs launched from one folder would share it.
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _is_database(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0].lower() in _DATABASE_SCHEMES


def artifact_root(uri: str, output_dir: str | Path) -> str | None:
    """Where a new experiment keeps its artifacts: under the run's output folder for a database
    store; None (the server's or the store's own choice) for Azure ML, HTTP or file stores."""
    if _is_database(uri):
        return str(Path(output_dir).resolve() / "mlartifacts")
    return None


def warm_store(uri: str) -> None:
    """Import MLflow and, for a database store, create its tables: seconds of imports and schema
    migrations on a new store, which the driver runs in a thread while the roles start, so that
    `open_tracker` after them only starts the run. HTTP and Azure ML stores are not contacted here.
    Never raises: a store that cannot open fails in `open_tracker`, with the run's context."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow

        if _is_database(uri):
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # only a head start: open_tracker meets (and reports) the same error
        log.debug("MLflow store %s not warmed: %r", uri, e)


def open_tracker(
    mlflow_cfg: Any, output_dir: str | Path, run_name: str | None, run_id: str | None = None
) -> Tracker:
    """The driver's tracker for `mlflow_cfg` (trainer.config.MlflowConfig): tables, the model
    and other artifacts of a local store land in `output_dir/mlartifacts`."""
    uri = tracking_uri(mlflow_cfg.tracking_uri, str(output_dir))
    return Tracker(
        uri,
        mlflow_cfg.experiment_name,
        run_name,
        run_id=run_id,
        artifact_root=artifact_root(uri, output_dir),
    )


def pip_requirements() -> list[str]:
    """Explicit requirements of the logged model (offline, MLflow cannot infer them)."""
    from importlib.metadata import version

    return [
        f"{p}=={version(p)}"
        for p in ("torch", "transformers", "accelerate", "tokenizers", "safetensors")
    ]


class Tracker:
    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None,
        run_id: str | None = None,
        artifact_root: str | None = None,
    ):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        self.mlflow = mlflow
        # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; restored at end() so that a later
        # run in this process does not mistake this run's store for an ambient (Azure ML) one.
        self._ambient_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        self.uri = uri
        existing = mlflow.get_experiment_by_name(experiment)
        if existing is None:
            mlflow.create_experiment(experiment, artifact_location=artifact_root)
        elif artifact_root and not _same_location(existing.artifact_location, artifact_root):
            log.warning(  # an experiment's artifact location is fixed when it is created
                "MLflow experiment %r keeps its artifacts in %s (set when it was created), not "
                "in %s: use another mlflow.experiment_name to keep them with this run",
                experiment,
                existing.artifact_location,
                artifact_root,
            )
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        self.run_id = self.run.info.run_id

    def params(self, params: dict[str, Any]) -> None:
        flat = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in params.items()}
        for k, v in flat.items():
            try:
                self.mlflow.log_param(k, str(v)[:6000])
            except self.mlflow.exceptions.MlflowException as e:
                log.warning(
                    "param %s not logged (%s)", k, e
                )  # a resumed run may not change a param

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        clean = {
            k.replace("@", "_"): float(v)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        }
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        self.mlflow.log_table(
            data={k: [r.get(k) for r in rows] for k in rows[0]}, artifact_file=artifact_file
        )

    def log_model(self, model_dir: str, pip_requirements: list[str]) -> str:
        """The final model as an MLflow transformers model (chat task) that pyfunc can load."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        info = self.mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tok},
            name="model",
            task="llm/v1/chat",
            pip_requirements=pip_requirements,
        )
        return info.model_uri

    def save_model(self, model_dir: str, path: str, pip_requirements: list[str]) -> None:
        """The same MLflow model written to a folder (an Azure ML job output registers from there)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        if Path(path).exists() and any(Path(path).iterdir()):
            path = str(Path(path) / "mlflow_model")
        self.mlflow.transformers.save_model(
            transformers_model={"model": model, "tokenizer": tok},
            path=path,
            task="llm/v1/chat",
            pip_requirements=pip_requirements,
        )

    def end(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)
        if self._ambient_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = self._ambient_uri


def _same_location(location: str, path: str) -> bool:
    return location.removeprefix("file://") == str(Path(path))


def run_params(cfg: Any, urls: list[str], key_file: Any, transport: str) -> dict[str, Any]:
    """The MLflow params of a new run: the trainer section (TRL names) and the pipeline's shape.
    Keys never: the API key's file path only."""
    t = cfg.trainer
    return {
        **{f"trainer.{k}": v for k, v in t.model_dump().items()},
        "model": cfg.model.name_or_path,
        "sampler_urls": urls,
        "sampler_api_key_file": str(key_file),
        "max_staleness": cfg.pipeline.max_staleness,
        "weight_sync": transport,
        "num_trainer_workers": cfg.pipeline.num_trainer_workers,
    }
