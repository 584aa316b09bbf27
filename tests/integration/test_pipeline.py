"""The whole pipeline on CPU: real vLLM sampler, real Ray reward pool, real DeepSpeed trainer.

Every test runs `python -m trainer` (or the `Run` object) on the tiny model and the offline task,
then asserts on the run's audit logs (`trained_prompts.jsonl`, `metrics.jsonl`, `replicas.json`),
its MLflow store and its final model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "configs" / "local.yaml"
pytestmark = pytest.mark.slow


def _env(pythonpath: bool = True) -> dict[str, str]:
    """`pythonpath=False`: as a user's shell in a clone, whose commands run the clone's code."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if pythonpath:
        return {**env, "PYTHONPATH": str(REPO)}
    return {k: v for k, v in env.items() if k != "PYTHONPATH"}


def _cmd(out: Path, *sets: str, resume: bool = False, base: list[str] | None = None) -> list[str]:
    """`base`: a documented command to run instead (it chooses the output folder itself)."""
    default = [sys.executable, "-m", "trainer", "--config", str(LOCAL)]
    cmd = base or [*default, "--set", f"trainer.output_dir={out}"]
    for s in sets:
        cmd = [*cmd, "--set", s]
    return cmd + (["--resume"] if resume else [])


def _run(
    out: Path, *sets: str, timeout: float = 600, resume: bool = False
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _cmd(out, *sets, resume=resume),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )
    assert proc.returncode == 0, (
        f"driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


def _start(
    out: Path,
    *sets: str,
    extra: tuple[str, ...] = (),
    marker: str | None = None,
    env_extra: dict[str, str] | None = None,
    base: list[str] | None = None,
    cwd: Path = REPO,
) -> subprocess.Popen:
    """The driver in its own session, its output in a file (a pipe nobody drains would block it).
    `marker` (KEY=VALUE): put in its environment, so every process of the run inherits it.
    `base` (a documented command) runs in `cwd` (a set-up clone) with the clone's code."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**_env(pythonpath=cwd == REPO), **(env_extra or {})}
    if marker:
        key, value = marker.split("=")
        env[key] = value
    with open(out.parent / "driver.log", "w") as log:
        return subprocess.Popen(
            [*_cmd(out, *sets, base=base), *extra],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _driver_log(out: Path) -> str:
    return (out.parent / "driver.log").read_text(errors="replace")[-6000:]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _expected_prompt_ids(steps: int, prompts_per_step: int, seed: int = 42) -> list[str]:
    """What an uninterrupted run trains: the data cursor's order (see trainer.prompts.DataCursor)."""
    from data.synthetic import SPLIT_SIZES, generate_rows
    from trainer.prompts import DataCursor

    rows = generate_rows("train", SPLIT_SIZES["train"], 0)
    cursor = DataCursor(len(rows), seed)
    return [rows[i]["id"] for _, i in cursor.take(steps * prompts_per_step)]


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited ({proc.returncode}) before {what}")
        time.sleep(0.5)  # polling files another process writes; bounded by the deadline
    raise AssertionError(f"timed out waiting for {what}")


def test_embedded_default_learns(tmp_path):
    """Learning proof: the sampler's mean reward over the last 10 steps is clearly above the first 10.

    The reward is measured on the sampler's outputs, so a weight sync that does not reach the sampler
    keeps it flat and fails this test. Also: staleness bound, exact prompt order, MLflow, final model.
    """
    out = tmp_path / "run"
    proc = _run(out)
    metrics = _jsonl(out / "metrics.jsonl")
    rewards = [m["reward"] for m in metrics]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    print(f"mean reward first 10 steps {first:.3f}, last 10 steps {last:.3f}")
    assert last > first + 0.15 and last > 1.5 * first, (first, last)
    # staleness: max_staleness 1 in configs/local.yaml
    trained = _jsonl(out / "trained_prompts.jsonl")
    for row in trained:
        assert all(row["step"] - v <= 1 for v in row["versions"]), row
    assert [m["policy/version"] for m in metrics] == list(range(1, len(metrics) + 1))
    # The weight probe checked the replica after every push (overlapped pushes report theirs a
    # step later; the last push is synchronous), within float32's tolerance.
    probed = [m for m in metrics if "weight_sync/probe_gap" in m]
    assert len(probed) >= len(metrics) - 1 and probed[-1] is metrics[-1], metrics[-1]
    assert all(m["weight_sync/probe_replicas"] == 1 for m in probed)
    assert max(m["weight_sync/probe_gap"] for m in probed) < 5e-3
    ids = [i for row in trained for i in row["prompt_ids"]]
    assert ids == _expected_prompt_ids(len(trained), 4)
    assert (out / "final_model" / "model.safetensors").is_file()
    assert "Open the UI with" in proc.stdout
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "grpo-local"]
    [run] = client.search_runs([exp.experiment_id])
    hist = client.get_metric_history(run.info.run_id, "reward")
    assert [h.step for h in hist] == list(range(1, len(metrics) + 1))
    for name in (
        "loss",
        "grad_norm",
        "rewards/char_class/mean",
        "timing/weight_sync_s",
        "policy/version",
        "sampler/tokens_per_s",
        "eval_rewards/char_class/mean",
    ):
        assert client.get_metric_history(run.info.run_id, name), name
    assert run.data.params["sampler_urls"].startswith("[")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's whole session (driver, Ray's processes, actors); gone members are fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _no_leftover_servers(out: Path) -> None:
    """Every sampler process the run started is gone (no orphans holding ports)."""
    for info in json.loads((out / "replicas.json").read_text()):
        pid = info["pid"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(
                0.2
            )  # the child gets SIGTERM on its parent's death; bounded wait for it to exit
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text(), (
            f"sampler pid {pid} still running"
        )


def test_kill_and_resume_trains_the_same_prompts(tmp_path):
    """SIGKILL the driver (whole process group) mid-run, then --resume: the trained prompt-id sequence
    equals an uninterrupted run's, nothing twice; MLflow continues the same run at the right step."""
    out = tmp_path / "run"
    sets = (
        "trainer.max_steps=8",
        "trainer.save_steps=3",
        "trainer.eval_steps=null",
        "trainer.save_total_limit=null",
    )
    proc = _start(out, *sets)
    try:
        _wait_for(
            lambda: (
                (out / "checkpoints" / "step-3" / "client_state.json").exists()
                and len(_jsonl(out / "metrics.jsonl")) >= 4
            ),
            480,
            "checkpoint step-3 and step 4",
            proc,
        )
    finally:
        _kill_group(proc)
    assert (
        len(_jsonl(out / "trained_prompts.jsonl")) >= 4
    )  # steps after the checkpoint were trained, then lost
    _no_leftover_servers(out)
    _run(out, *sets, resume=True)
    trained = _jsonl(out / "trained_prompts.jsonl")
    assert [r["step"] for r in trained] == list(range(8))
    ids = [i for r in trained for i in r["prompt_ids"]]
    assert ids == _expected_prompt_ids(8, 4) and len(set(ids)) == len(ids)
    metrics = _jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert (
        metrics[3]["policy/version"] == 4.0
    )  # first resumed step trained on the checkpoint's weights + 1
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1  # resumed into the same run
    steps = sorted({h.step for h in client.get_metric_history(runs[0].info.run_id, "reward")})
    assert steps == list(range(1, 9))


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path):
    """The newest checkpoint's engine file cut in half (a crash while it was flushed, a bad copy):
    --resume logs that it skipped it and why, and continues from the previous one."""
    out = tmp_path / "run"
    sets = (
        "trainer.save_steps=1",
        "trainer.eval_steps=null",
        "trainer.save_total_limit=null",
        "mlflow.log_model=false",
    )
    _run(out, "trainer.max_steps=2", *sets)
    [model_file] = (out / "checkpoints" / "step-2" / "state").glob("*model_states.pt")
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    proc = _run(out, "trainer.max_steps=3", *sets, resume=True)
    log = proc.stdout + proc.stderr
    assert "step-2 skipped" in log and model_file.name in log
    assert "resumed from " + str(out / "checkpoints" / "step-1") in log
    trained = _jsonl(out / "trained_prompts.jsonl")
    assert [r["step"] for r in trained] == [0, 1, 2]  # step 1 (0-based) trained again
    ids = [i for r in trained for i in r["prompt_ids"]]
    assert ids == _expected_prompt_ids(3, 4)


CHAOS_RUN = (
    "sampler.replicas=2",
    "trainer.max_steps=10",
    "trainer.eval_steps=null",
    "trainer.save_steps=100",
)


def _chaos(out: Path, act, *sets: str) -> tuple[dict, list[dict], str]:
    """Run CHAOS_RUN, `act(victim)` on replica 1 at step 3, let the run finish. Returns the
    victim's old entry, replicas.json after the run, the driver's log; asserts what every chaos
    run must show: exit 0, replica 1 restarted once, no prompt lost or trained twice."""
    proc = _start(out, *CHAOS_RUN, *sets)
    victim = None
    try:
        _wait_for(
            lambda: (out / "metrics.jsonl").exists() and len(_jsonl(out / "metrics.jsonl")) >= 3,
            480,
            "step 3",
            proc,
        )
        victim = json.loads((out / "replicas.json").read_text())[1]
        act(victim)
        proc.wait(timeout=480)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        if victim is not None:  # a stopped process ignores everything but SIGKILL
            with contextlib.suppress(ProcessLookupError):
                os.killpg(victim["pid"], signal.SIGKILL)
    assert proc.returncode == 0, _driver_log(out)
    replicas = json.loads((out / "replicas.json").read_text())
    assert replicas[0]["restarts"] == 0
    assert replicas[1]["restarts"] == 1 and replicas[1]["pid"] != victim["pid"]
    trained = _jsonl(out / "trained_prompts.jsonl")
    assert [i for r in trained for i in r["prompt_ids"]] == _expected_prompt_ids(10, 4)
    log = (out.parent / "driver.log").read_text(errors="replace")
    # the restarted replica was probed after its resync, before it served again
    assert f"replica {replicas[1]['url']} rejoined at policy version" in log
    return victim, replicas, log


def test_sampler_replica_killed_mid_run(tmp_path):
    """Chaos: SIGKILL one of two sampler replicas mid-run. The run finishes, the replica comes back with
    the current version, the trained prompt ids show no loss or duplicate."""
    out = tmp_path / "run"
    _, replicas, _ = _chaos(out, lambda victim: os.kill(victim["pid"], signal.SIGKILL))
    assert replicas[1]["version"] >= 4
    metrics = _jsonl(out / "metrics.jsonl")
    assert metrics[-1]["rollout/sampler_restarts"] == 1.0
    assert metrics[-1]["weight_sync/probe_replicas"] == 2.0


def test_sampler_replica_stopped_mid_run(tmp_path):
    """Chaos: SIGSTOP one of two sampler replicas mid-run. It stays alive and accepts connections
    but never answers, so only the watchdog can tell: it declares it hung, kills it (its in-flight
    requests re-run on the other replica), and it is restarted between steps. The run finishes
    and the trained prompt ids show no loss or duplicate."""
    out = tmp_path / "run"
    victim, _, log = _chaos(
        out,
        lambda victim: os.killpg(victim["pid"], signal.SIGSTOP),  # the server and its engine core
        "sampler.watchdog.interval_s=2",
        "sampler.watchdog.timeout_s=5",
        "sampler.watchdog.failures=3",
    )
    metrics = _jsonl(out / "metrics.jsonl")
    assert metrics[-1]["rollout/sampler_hung"] == 1.0
    assert metrics[-1]["rollout/sampler_restarts"] == 1.0
    assert f"sampler replica 1 ({victim['url']}) failed 3 health checks in a row: hung" in log


def test_a_sampler_serving_other_weights_stops_the_run_before_step_1(tmp_path):
    """The weight probe: the replica serves bfloat16-rounded weights (a real gap of ~1e-3 nats a
    token against the float32 trainer) and the tolerance is set below it, as a wrong transport
    would exceed the default one. The run stops before training, naming replica, version, gap."""
    out = tmp_path / "run"
    proc = subprocess.run(
        _cmd(out, "sampler.dtype=bfloat16", "pipeline.weight_probe_tolerance=1e-4"),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error: weight probe")]
    url = json.loads((out / "replicas.json").read_text())[0]["url"]
    assert f"replica {url} does not serve the trainer's weights of policy version 0" in line
    assert "tolerance 0.0001 for float32 vs bfloat16" in line, line
    assert "Traceback" not in proc.stderr[-2000:], proc.stderr[-2000:]
    assert not (out / "metrics.jsonl").exists() or not _jsonl(out / "metrics.jsonl")
    _no_leftover_servers(out)


def test_stale_groups_are_dropped_counted_and_reissued(tmp_path):
    """Generating further ahead than max_staleness allows: groups that come back too old are dropped,
    counted and re-issued; no trained sample is older than max_staleness."""
    out = tmp_path / "run"
    _run(
        out,
        "pipeline.max_staleness=0",
        "pipeline.dispatch_ahead=2",
        "trainer.max_steps=6",
        "trainer.eval_steps=null",
        "trainer.save_steps=100",
    )
    trained = _jsonl(out / "trained_prompts.jsonl")
    assert all(
        v == row["step"] for row in trained for v in row["versions"]
    )  # k = 0: on-policy only
    metrics = _jsonl(out / "metrics.jsonl")
    assert metrics[-1]["rollout/stale_groups_dropped"] > 0
    assert [i for r in trained for i in r["prompt_ids"]] == _expected_prompt_ids(6, 4)


def test_zero_variance_groups_are_filtered_and_counted(tmp_path):
    """With filtering on and a reward that gives no signal (the reference recipe's strict format reward on a
    random tiny model scores 0 everywhere), groups are filtered, over-sampled, counted, and the run
    still finishes instead of stalling."""
    out = tmp_path / "run"
    _run(
        out,
        "pipeline.filter_zero_std_groups=true",
        "trainer.reward_funcs=[format]",
        "trainer.max_steps=2",
        "trainer.eval_steps=null",
        "trainer.save_steps=100",
        "pipeline.max_staleness=0",
    )
    m = _jsonl(out / "metrics.jsonl")[-1]
    assert m["rollout/zero_std_groups_filtered"] >= 4 and m["rollout/zero_std_groups_kept"] == 8
    trained = _jsonl(out / "trained_prompts.jsonl")
    assert [len(r["prompt_ids"]) for r in trained] == [4, 4]


def test_serve_keeps_the_final_policy_live_until_ctrl_c(tmp_path):
    """The README's main job as written, in a set-up clone, with `--serve` (and 2 steps): after
    the last step the replica keeps serving the final policy (version = the number of steps),
    the README's curl example gets its answer, and Ctrl-C ends the run with exit 0 and nothing
    left. Eval results reach the console beside the step lines."""
    import httpx
    from doc_commands import readme_command, set_up_clone

    clone = set_up_clone(tmp_path / "clone")
    out = clone / "outputs" / "local"  # configs/local.yaml's output_dir, relative to the clone
    marker = f"GRPO_TEST_RUN={tmp_path.name}"
    sets = ("trainer.max_steps=2", "trainer.eval_steps=2", "mlflow.log_model=false")
    main = shlex.split(readme_command(".venv/bin/python -m trainer --config configs/local.yaml"))
    proc = _start(out, *sets, extra=("--serve",), marker=marker, base=main, cwd=clone)
    try:
        _wait_for(
            lambda: "still serving the final policy" in _driver_log(out), 480, "serving", proc
        )
        example = "\n".join(
            readme_command(start) for start in ("URL=$(", "curl -s $URL/v1/chat/completions")
        )
        done = subprocess.run(["bash", "-c", example], cwd=clone, env=_env(pythonpath=False),
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, f"{example}\n{done.stderr[-2000:]}"
        assert json.loads(done.stdout)["choices"][0]["message"]["role"] == "assistant", done.stdout
        url = json.loads((out / "replicas.json").read_text())[0]["url"]
        api_key = (out / "sampler_api_key").read_text().strip()
        r = httpx.post(
            f"{url}/v1/completions",
            json={"model": "policy", "prompt": "Reply with digits:", "max_tokens": 4},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-policy-version"] == "2"
    finally:
        _ctrl_c(proc)
    log = _driver_log(out)
    assert proc.returncode == 0, log[-4000:]
    assert "eval at step 2 (" in log, log[-3000:]
    assert "Traceback" not in log and "interrupted" not in log, log[-3000:]
    _wait_gone(marker)


def _ctrl_c(proc: subprocess.Popen, then=None) -> None:
    """SIGINT to the driver's process group, as a terminal's Ctrl-C; SIGKILL if it hangs.
    `then`: called once the signal is sent (releases a held driver: trainer.holds)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    if then is not None:
        then()
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            _kill_group(proc)


def _wait_gone(marker: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _marked(marker):
        time.sleep(0.5)  # Ray's own processes exit asynchronously after ray.shutdown(); bounded
    assert not _marked(marker), _marked(marker)


def _marked(marker: str) -> list[str]:
    """Live processes whose environment carries `marker` (inherited by every process a run
    starts, whatever its session: Ray's daemons and workers, servers, engine cores)."""
    out = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() not in env.read_bytes():
                continue
            state = (env.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (env.parent / "cmdline").read_bytes()[:120]
        except OSError:  # gone meanwhile
            continue
        if state != "Z":
            out.append(f"{env.parent.name} {cmd!r}")
    return out


def _metrics_lines(out: Path) -> int:
    return len(_jsonl(out / "metrics.jsonl")) if (out / "metrics.jsonl").exists() else 0


@pytest.mark.parametrize(
    "when,steps,ready,hint",
    [
        ("start-up", 500, lambda out, log: "start-up: Ray ready" in log, "no checkpoint yet"),
        ("steps", 500, lambda out, log: _metrics_lines(out) >= 2, "--resume continues after step"),
        # held (trainer.holds) while the final model is logged: the signal comes mid-save
        (
            "final-save",
            2,
            lambda out, log: (out.parent / "holds" / "final-save.held").exists(),
            "--resume saves the final model",
        ),
    ],
)
def test_ctrl_c_shuts_every_role_down(tmp_path, when, steps, ready, hint):
    """Ctrl-C (SIGINT to the driver's process group, as a terminal sends it) during start-up,
    the steps or the final save: exit 130, one message saying what --resume will redo, no
    traceback, and no process of the run left: sampler servers, their vLLM engine cores, Ray's
    processes."""
    from trainer.holds import HOLD_ENV

    out, holds = tmp_path / "run", tmp_path / "holds"
    holds.mkdir()
    marker = f"GRPO_TEST_RUN={tmp_path.name}"
    sets = (f"trainer.max_steps={steps}", "trainer.eval_steps=null", "trainer.save_steps=1")
    proc = _start(out, *sets, marker=marker, env_extra={HOLD_ENV: f"{when}:{holds}"})
    try:
        _wait_for(lambda: ready(out, _driver_log(out)), 480, when, proc)
    finally:
        _ctrl_c(proc, then=lambda: (holds / f"{when}.release").touch())
    err = _driver_log(out)
    assert proc.returncode == 130, err[-4000:]
    assert "interrupted" in err and "Traceback" not in err, err[-4000:]
    assert hint in err, err[-2000:]
    _wait_gone(marker)
    if when == "final-save":  # what the hint promises: --resume trains nothing, saves the model
        done = _run(out, *sets, resume=True)
        assert _metrics_lines(out) == steps and "Done. Final model" in done.stdout
        assert (out / "final_model" / "model.safetensors").is_file()


def test_medmcqa_seed_setup_runs_on_the_tiny_model(tmp_path, medmcqa_dir):
    """The README's `configs/medmcqa_tiny.yaml` command as written, in a set-up clone whose
    `local_data/medmcqa` is the shared MedMCQA sample (the reference recipe's accuracy 0.8 +
    format 0.2), for 4 of its steps."""
    import shutil

    from doc_commands import readme_command, set_up_clone

    clone = set_up_clone(tmp_path / "clone")
    shutil.copytree(medmcqa_dir / "small", clone / "local_data" / "medmcqa")
    out = clone / "outputs" / "medmcqa_tiny"  # the config's output_dir
    cmd = _cmd(
        out,
        "trainer.max_steps=4",
        "model.tiny_warm_start_steps=0",  # plumbing only; the warm start has its own test
        "trainer.eval_steps=2",
        "mlflow.log_model=false",
        base=shlex.split(readme_command(".venv/bin/python -m trainer --config configs/medmcqa")),
    )
    proc = subprocess.run(cmd, cwd=clone, env=_env(pythonpath=False), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    metrics = _jsonl(out / "metrics.jsonl")
    assert len(metrics) == 4
    assert {"rewards/accuracy/mean", "rewards/format/mean"} <= set(metrics[-1])
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    [run] = client.search_runs(
        [e.experiment_id for e in client.search_experiments() if e.name == "grpo-service"]
    )
    assert client.get_metric_history(run.info.run_id, "eval_rewards/accuracy/mean")


def _free_pair() -> int:
    """A port p with p and p + 1 free now (the test's own choice; replicas bind at once)."""
    import socket

    from sampler.netaddr import free_port

    for _ in range(100):
        p = free_port()
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise AssertionError("no two consecutive free ports")


def test_sampler_port_puts_replica_i_on_port_plus_i(tmp_path):
    """`sampler.port` is honoured (it used to be dropped: every replica got a free port)."""
    out = tmp_path / "run"
    port = _free_pair()
    _run(
        out,
        f"sampler.port={port}",
        "sampler.replicas=2",
        "trainer.max_steps=1",
        "trainer.eval_steps=null",
        "trainer.save_steps=100",
    )
    urls = [r["url"] for r in json.loads((out / "replicas.json").read_text())]
    assert urls == [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
