"""The pipeline driver: the GRPO run loop.

Owns: the run's lifecycle in order: prepare (trainer.preparation), start the roles
(trainer.roles), resume or prove the samplers' weights, then per step: take the scored batch
(trainer.orchestrator), train on every rank, push the weights, log, evaluate
(trainer.evaluation), checkpoint (trainer.checkpoints), heal the replicas (trainer.healing);
then the final model, and a clean shutdown on success, failure or Ctrl-C.
Does not know: GRPO math, HTTP details, reward semantics, Ray placement, file formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from trainer import checkpoints
from trainer.batch import loss_tokens
from trainer.config import ConfigError, RunConfig
from trainer.evaluation import evaluate
from trainer.healing import ReplicaHealer
from trainer.holds import hold
from trainer.orchestrator import Orchestrator, StepBatch
from trainer.preparation import Prompts, prepare_model_and_prompts, redacted, total_steps
from trainer.prompts import DataCursor, Prompt
from trainer.roles import Roles
from trainer.run_files import RunFiles, completion_rows, eval_line, progress_line
from trainer.sampling import rollout_settings

log = logging.getLogger("trainer")


@contextlib.contextmanager
def phase(what: str) -> Iterator[None]:
    """Log how long a start-up or wind-down phase took (the run's own log says where time goes)."""
    t0 = time.perf_counter()
    yield
    log.info("%s: %.1fs", what, time.perf_counter() - t0)


class Run:
    def __init__(self, cfg: RunConfig, resume: bool | str = False):
        self.cfg = cfg
        self.out = Path(cfg.trainer.output_dir).resolve()
        self.world_size = cfg.pipeline.num_trainer_workers
        # "auto": resume when a checkpoint exists (an Azure ML job retried by the platform)
        self.resume = (
            checkpoints.latest_valid(self.out / "checkpoints", self.world_size) is not None
            if resume == "auto"
            else bool(resume)
        )
        self.files = RunFiles(self.out)
        self.roles = Roles(cfg, self.out, self.files)
        self.prompts = Prompts([], [])
        self.cursor: DataCursor | None = None
        self.steps = 0
        self.scorer: Any = None
        self.client: Any = None  # sampler.client.SamplerClient of the replicas in rotation
        self.tracker: Any = None  # trainer.tracking.Tracker while the run is open
        self.orch: Orchestrator | None = None
        self.healer: ReplicaHealer | None = None
        self._pending_push: asyncio.Task | None = None
        self._store_warm: asyncio.Future | None = None  # MLflow's store, prepared during start-up
        self.steps_done = 0  # steps trained (and logged) so far, this session included
        self.checkpoint_step: int | None = None  # the newest complete checkpoint's step
        self.finished = False  # the final model is saved (a later Ctrl-C is no interruption)
        self.stop_requested = False  # a stop signal came (set by trainer.entry when it comes)

    # ------------------------------------------------------------------ the run
    async def run_async(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = checkpoints.resume_point(self.out, self.resume, self.world_size)
        reward_fns = self._reward_fns()
        # The slow start-up phases run in threads: the event loop stays free for Ctrl-C.
        model_path = await asyncio.to_thread(self._prepare)
        with phase("start-up: Ray ready"):
            self.roles.init_ray()
        await self._start_roles(model_path, reward_fns)
        start_step, version = await self._begin(ckpt)
        for step in range(start_step, self.steps):
            version = await self._step(step, version, first=step == start_step)
        await self._finish()
        self.finished = True
        return 0

    async def serve(self) -> None:
        """Keep the replicas serving the final policy until the run is cancelled (Ctrl-C)."""
        if self.healer is not None:  # nothing restarts a replica now: no watchdog kills either
            await self.healer.aclose()
        for url in self.client.urls:
            print(
                f"sampler still serving the final policy at {url}/v1 (API key in "
                f"{self.roles.key_file}); Ctrl-C to stop",
                flush=True,
            )
        await asyncio.Event().wait()

    def _reward_fns(self) -> list:
        """The reward callables: plugins import here, before anything starts (the rest of the
        config was validated at load)."""
        try:
            return self.cfg.reward_spec.resolve()
        except ValueError as e:
            raise ConfigError(f"trainer.reward_funcs: {e}") from None

    def _prepare(self) -> str:
        """The model folder and the prompts (what the roles start from); returns the model path."""
        with phase("start-up: model and prompts ready"):
            model_path, self.prompts = prepare_model_and_prompts(self.cfg, self.out)
        self.steps = total_steps(self.cfg, len(self.prompts.train))
        self.cursor = DataCursor(
            len(self.prompts.train), self.cfg.trainer.seed, self.cfg.data.shuffle
        )
        return model_path

    async def _start_roles(self, model_path: str, reward_fns: list) -> None:
        """The reward pool, the sampler replicas and the trainer ranks (side by side when they
        run on their own machines: neither needs the other until the weight pushers connect,
        and MLflow's store is warmed meanwhile), then the weight pushers."""
        from rewards.factory import build_scorer
        from trainer.tracking import tracking_uri, warm_store

        cfg = self.cfg
        with phase("start-up: reward pool ready"):
            self.scorer = build_scorer(cfg.reward_spec, reward_fns)
        resolved = self.out / "resolved_config.yaml"  # what this run used, overrides included
        resolved.write_text(yaml.safe_dump(redacted(cfg), sort_keys=False))
        if self.roles.on_own_machines():
            uri = tracking_uri(cfg.mlflow.tracking_uri, str(self.out))
            self._store_warm = asyncio.ensure_future(asyncio.to_thread(warm_store, uri))
            urls, _ = await asyncio.gather(
                self._start_samplers(model_path, resolved), self._start_trainers(model_path)
            )
        else:  # one CPU machine: side by side, the ranks' start slowed the replicas' (the
            # critical path) more than it saved (docs/benchmarks.md, section 7)
            urls = await self._start_samplers(model_path, resolved)
            await self._start_trainers(model_path)
        with phase("start-up: weight pushers ready"):
            await self.roles.setup_pushers(urls)
        self.healer = ReplicaHealer(
            self.roles.replicas,
            self.client,
            cfg.sampler.watchdog,
            cfg.sampler.startup_timeout_s,
            self.files.write_replicas,
            self._set_rotation,
            self._resync,
        )
        self.healer.start(urls)

    async def _start_samplers(self, model_path: str, resolved: Path) -> list[str]:
        with phase("start-up: sampler replicas live"):
            urls = await asyncio.to_thread(self.roles.start_samplers, model_path, resolved)
            await self._connect(urls)
        return urls

    async def _start_trainers(self, model_path: str) -> None:
        with phase("start-up: trainer ranks ready"):
            await asyncio.to_thread(self.roles.start_trainers, model_path, self.steps)

    async def _connect(self, urls: list[str]) -> None:
        """The rollout client, once every replica answers (a clear error naming the setting)."""
        from sampler.client import SamplerClient

        s = self.cfg.sampler
        self.client = SamplerClient(
            urls,
            api_key=self.roles.trainer_key,
            admin_key=self.roles.admin_key,
            request_timeout_s=s.request_timeout_s,
        )
        try:
            await self.client.wait_healthy(s.startup_timeout_s)
        except TimeoutError as e:
            setting = "sampler.external_urls" if s.external_urls else "sampler (launched replicas)"
            raise ConfigError(f"{setting}: {e}; start them or fix the URLs") from None

    async def _begin(self, ckpt: Path | None) -> tuple[int, int]:
        """Resume (or prove the samplers' weights), open tracking, start the rollouts; returns
        (first step, policy version)."""
        from trainer.tracking import open_tracker, run_params

        cfg, t = self.cfg, self.cfg.trainer
        start_step, version, run_id = 0, 0, None
        with phase("start-up: samplers serve the trainer's weights"):
            if ckpt is not None:
                states = await self.roles.all("load_checkpoint", str(ckpt))
                state = checkpoints.read_marker(ckpt) or states[0]
                start_step, version = state["step"], state["version"]
                self.checkpoint_step = self.steps_done = start_step
                run_id = state.get("mlflow_run_id")
                self.cursor.load_state_dict(state["cursor"])
                # The samplers serve the checkpoint's weights before any rollout; external ones
                # may serve a newer version of the session that died: this session takes over.
                await self.push(version, reset=True)
                log.info("resumed from %s: step %d, policy version %d", ckpt, start_step, version)
            elif cfg.sampler.external_urls:
                # external samplers start from the trainer's weights, not their own
                await self.push(version, reset=True)
            else:  # launched replicas loaded the trainer's checkpoint: prove it
                await self.roles.all("check_weights", version)
        self.files.truncate(start_step)
        if self._store_warm is not None:
            await self._store_warm
        self.tracker = open_tracker(cfg.mlflow, self.out, t.run_name, run_id=run_id)
        if run_id is None:
            self.tracker.params(
                run_params(
                    cfg, self.client.urls, self.roles.key_file, self.roles.weight_transport()
                )
            )
        dropped = {
            f"data/{k}_prompts_dropped_too_long": float(v) for k, v in self.prompts.dropped.items()
        }
        self.tracker.metrics(dropped, step=start_step)
        self.orch = Orchestrator(
            self.prompts.train,
            self.cursor,
            self.client,
            self.scorer,
            rollout_settings(cfg, self.steps),
            start_step,
            version,
        )
        self.orch.start()
        if self.prompts.evals and t.eval_on_start and start_step == 0:
            await self._eval(0)
        return start_step, version

    async def _step(self, step: int, version: int, first: bool) -> int:
        """One training step (0-based `step`); returns the policy version after it."""
        cfg, t, done = self.cfg, self.cfg.trainer, step + 1
        t0 = time.perf_counter()
        batch = await self.orch.get_step(step)
        t1 = time.perf_counter()
        metrics = {**batch.metrics, **await self.train(batch)}
        t2 = time.perf_counter()
        if done % cfg.pipeline.sync_every == 0 or done == self.steps:
            version = done
            overlap = self.roles.overlap_push and done < self.steps
            metrics.update(await self.push(version, background=overlap))
        metrics.update(
            {
                "timing/wait_rollout_s": t1 - t0,
                "timing/train_s": t2 - t1,
                "timing/step_s": time.perf_counter() - t0,
                "policy/version": float(version),
                "epoch": batch.cursor_position / self.cursor.n,
            }
        )
        self.files.record_trained(step, batch)
        self.files.metrics(done, metrics)
        if done % t.logging_steps == 0 or first:
            self.tracker.metrics(metrics, step=done)
        print(progress_line(done, self.steps, metrics), flush=True)
        if t.log_completions and done % t.log_completions_steps == 0:
            self.tracker.table(completion_rows(done, batch), f"completions/step_{done:06d}.json")
        if self.prompts.evals and t.eval_steps and done % t.eval_steps == 0:
            await self._eval(done)
        self.steps_done = done
        if done % t.save_steps == 0 or done == self.steps:
            await self.save_checkpoint(done, batch, version)
        await self._heal_replicas(version)
        return version

    async def _finish(self) -> None:
        """The final model (folder, MLflow, the Azure ML job output); the run closes in MLflow."""
        from trainer.tracking import pip_requirements

        final = self.out / "final_model"
        with phase("wind-down: final model saved"):
            await self.roles.all("save_hf", str(final))
            hold("final-save")  # tests: a Ctrl-C while the final model is being logged
            self.stop_point()
            log.info("final model: %s", final)
            if self.cfg.mlflow.log_model:
                uri = self.tracker.log_model(str(final), pip_requirements())
                log.info("MLflow model: %s", uri)
            if os.environ.get("GRPO_MODEL_OUTPUT_DIR"):  # the job's model output (deploy/launch.py)
                dest = Path(os.environ["GRPO_MODEL_OUTPUT_DIR"])
                self.tracker.save_model(str(final), str(dest), pip_requirements())
                log.info("MLflow model saved to the job output %s", dest)
            self.stop_point()  # before the run is marked done in MLflow
        tracker, self.tracker = self.tracker, None
        tracker.end()
        print(
            f"\nDone. Final model: {final}\nMLflow: {tracker.uri} (run {tracker.run_id})\n"
            f"Open the UI with: .venv/bin/mlflow ui --backend-store-uri {tracker.uri}",
            flush=True,
        )

    # ------------------------------------------------------------------ steps' parts
    async def train(self, batch: StepBatch) -> dict[str, float]:
        n = len(self.roles.workers)
        per = len(batch.samples) // n
        shards = [batch.samples[i * per : (i + 1) * per] for i in range(n)]
        items = loss_tokens(batch.samples, self.cfg.trainer.mask_truncated_completions)
        results = await self.roles.all("train_step", per_rank=[(sh, items) for sh in shards])
        return results[0]

    async def push(
        self,
        version: int,
        urls: list[str] | None = None,
        background: bool = False,
        reset: bool = False,
    ) -> dict[str, float]:
        """Send the trainer's weights as `version`; the orchestrator learns it once they are live.

        `background`: return once rank 0 has copied the weights; the push finishes while the
        next step trains. The metrics returned include the previous background push's.
        """
        previous = await self.finish_push()
        bucket = self.cfg.pipeline.weight_sync_bucket_mb << 20
        res = await self.roles.all("push_weights", version, bucket, urls, background, reset)
        # A resync of restarted replicas (`urls`) changes no version: the others already serve it.
        if urls is None and background:
            self._pending_push = asyncio.create_task(self._live_after_push(version))
        elif urls is None and self.orch is not None:
            self.orch.set_version(version)
        return {**previous, **res[0]}

    async def _live_after_push(self, version: int) -> dict[str, float]:
        rank0 = self.roles.workers[0]
        stats = await rank0.finish_push.options(concurrency_group="push").remote()
        if self.orch is not None:
            self.orch.set_version(version)
        return stats

    async def finish_push(self) -> dict[str, float]:
        """Wait for the background push in flight, if any; its metrics (its error raises)."""
        task, self._pending_push = self._pending_push, None
        return await task if task is not None else {}

    async def _eval(self, step: int) -> None:
        """Evaluate, log to MLflow, and say it on the console beside the step lines."""
        m = await self.evaluate(self.prompts.evals)
        self.tracker.metrics(m, step=step)
        print(eval_line(step, len(self.prompts.evals), m), flush=True)

    async def evaluate(self, evals: list[Prompt]) -> dict[str, float]:
        return await evaluate(self.client, self.scorer, self.cfg.trainer, evals)

    async def save_checkpoint(self, step: int, batch: StepBatch, version: int) -> Path:
        root = self.out / "checkpoints"
        path = root / f"{checkpoints.CKPT_PREFIX}{step}"
        state = {
            "step": step,
            "cursor": {**self.cursor.state_dict(), "position": batch.cursor_position},
            "version": version,
            "mlflow_run_id": self.tracker.run_id if self.tracker else None,
            "world_size": self.world_size,
        }
        # A folder of this step left by an unfinished or corrupt save (resume skipped it).
        shutil.rmtree(path, ignore_errors=True)
        await self.roles.all("save_checkpoint", str(path), state)  # every rank fsyncs its files
        checkpoints.write_marker(path, state)  # last, durably: marks it complete
        self.checkpoint_step = step
        if self.cfg.trainer.save_total_limit:
            checkpoints.prune(root, self.cfg.trainer.save_total_limit, path)
        return path

    def stop_point(self) -> None:
        """Stop here if a stop signal came while the loop's thread was busy in synchronous code:
        asyncio's cancel would reach the run only after it, at its next wait."""
        if self.stop_requested:
            raise asyncio.CancelledError

    def resume_hint(self) -> str:
        """What `--resume` would do after an interruption now (printed on Ctrl-C)."""
        return checkpoints.resume_hint(self.checkpoint_step, self.steps_done, self.steps)

    # ------------------------------------------------------------------ replica upkeep
    async def _heal_replicas(self, version: int) -> None:
        """Restart dead (or hung, hence killed) sampler replicas and resync them to `version`."""
        await self.healer.heal(version)
        self.orch.counters["sampler_restarts"] = self.healer.restarts
        self.orch.counters["sampler_hung"] = self.healer.watchdog.hung_total

    async def _set_rotation(self, urls: list[str]) -> None:
        """The replicas in service, for the rollout client and every trainer rank's pusher."""
        self.client.set_urls(urls)
        await self.roles.all("set_sampler_urls", urls)

    async def _resync(self, url: str, version: int, others: list[str]) -> dict[str, float]:
        """Bring a restarted replica to `version` (and probe it) before it serves again."""
        await self.roles.all("set_sampler_urls", [*others, url])
        return await self.push(version, urls=[url])

    # ------------------------------------------------------------------ teardown
    async def shutdown(self) -> None:
        if self.tracker is not None:  # the run did not finish: mark it so in MLflow
            self.tracker.end(status="FAILED")
            self.tracker = None
        if self.healer is not None:  # no watchdog kills while the roles shut down
            await self.healer.aclose()
        if self._pending_push is not None:  # the worker's own shutdown waits for its thread
            self._pending_push.cancel()
        if self._store_warm is not None:
            self._store_warm.cancel()
        if self.orch is not None:
            await self.orch.aclose()
        await self.roles.stop()
        if self.client is not None:
            await self.client.aclose()
        if self.scorer is not None:
            self.scorer.close()
        self.roles.release()
