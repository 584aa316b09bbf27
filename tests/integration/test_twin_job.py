"""The Azure ML job's real command on a CPU twin: nodes with their own addresses (network namespaces).

Each topology runs `python -m deploy.launch ...` exactly as `deploy/jobspec.py` writes it for the job,
one launcher per simulated node with AML's per-node variables, over real Ray across nodes, the real
`python -m trainer`, real sampler replicas and DeepSpeed ranks placed by role. Nothing is on
127.0.0.1 unless it is node-local, so a "this node" vs "the driver's node" mix-up shows here.
`.ci/run` sets GRPO_REQUIRE_NETNS=1: there these tests fail instead of skipping.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from twin_cluster import REPO, Twin, TwinJob, require_namespaces

pytestmark = [pytest.mark.slow]

CONFIG = REPO / "configs" / "local.yaml"
# The job's command plus what sizes Ray for a 2-core, 24 GiB box shared by every simulated node.
MACHINE_FLAGS = ["--object-store-memory", str(96 * 2**20), "--heartbeat-timeout", "30"]
# Short and quiet: enough steps that the sampler serves while the trainer trains; no eval/model.
BASE_SETS = [
    "sampler.host=0.0.0.0",  # the sampler node serves the trainer nodes (and people) over the network
    "trainer.eval_steps=null",
    "trainer.save_steps=1000",
    "trainer.log_completions_steps=1000",
    "mlflow.log_model=false",
    "rewards.use_ray=false",
    "pipeline.connect_timeout_s=60",
]


@pytest.fixture
def twin4():
    require_namespaces()
    with Twin(4) as twin:
        yield twin


@pytest.fixture
def twin3():
    require_namespaces()
    with Twin(3) as twin:
        yield twin


def _start(twin: Twin, sampler_nodes: int, trainer_nodes: int, *sets: str) -> TwinJob:
    job = TwinJob(
        twin,
        sampler_nodes=sampler_nodes,
        trainer_nodes=trainer_nodes,
        config=CONFIG,
        overrides=[*BASE_SETS, *sets],
        machine_flags=MACHINE_FLAGS,
    )
    job.start()
    return job


def _wait_for(path: Path, job: TwinJob, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        codes = [p.poll() for p in job.procs]
        assert all(c is None for c in codes), f"a node exited {codes}:\n{job.output()}"
        assert time.monotonic() < deadline, f"{path.name} not written:\n{job.output()}"
        time.sleep(0.2)


def _metrics(job: TwinJob) -> list[dict]:
    f = job.out / "metrics.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []


def _assert_no_process_left(twin: Twin, nodes: range, timeout: float = 30) -> None:
    """Every namespace of the run is empty (polled: a process killed by its node's reaper takes
    a moment to be reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = {i: twin.pids(i) for i in nodes}
        if not any(left.values()):
            return
        if time.monotonic() > deadline:
            names = {
                i: [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in pids]
                for i, pids in left.items()
                if pids
            }
            pytest.fail(f"processes of the run left behind: {names}")
        time.sleep(0.5)


def _curl(twin: Twin, node: int, url: str, key: str | None, body: dict) -> tuple[int, dict, str]:
    """An HTTP POST from inside node `node` (curl: a client that is not part of the run)."""
    head, out = twin.root / "curl.head", twin.root / "curl.body"
    cmd = ["curl", "-s", "-S", "-m", "60", "-D", str(head), "-o", str(out), "-w", "%{http_code}"]
    cmd += ["-H", "Content-Type: application/json"]
    if key:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    r = twin.run(node, [*cmd, "-d", json.dumps(body), url], timeout=90)
    assert r.returncode == 0, f"curl from node {node} to {url} failed: {r.stderr}"
    headers = {
        k.strip().lower(): v.strip()
        for k, sep, v in (line.partition(":") for line in head.read_text().splitlines()[1:])
        if sep
    }
    return int(r.stdout.strip()), headers, out.read_text()


@pytest.mark.timeout(900)
def test_one_sampler_node_two_trainer_nodes_cross_node_zero_and_push(twin4):
    """Topology 1: node 0 samples, nodes 1-2 train (one rank each: the ZeRO group and the weight
    push cross nodes); node 3 is a person's machine asking the live sampler over the network."""
    job = _start(twin4, 1, 2, "pipeline.num_trainer_workers=2", "trainer.max_steps=12")
    _wait_for(job.out / "replicas.json", job, 420)
    replicas = json.loads((job.out / "replicas.json").read_text())
    url = replicas[0]["url"]
    assert url.startswith(f"http://{twin4.ips[0]}:"), replicas  # routable, on the sampler node
    key = (job.out / "sampler_api_key").read_text().strip()
    chat = {
        "model": "policy",
        "messages": [{"role": "user", "content": "Digits only: 42"}],
        "max_tokens": 8,
    }
    status, _, _ = _curl(twin4, 3, f"{url}/v1/chat/completions", None, chat)
    assert status == 401  # the sampler listens beyond loopback: not without the key
    status, headers, payload = _curl(twin4, 3, f"{url}/v1/chat/completions", key, chat)
    assert status == 200, payload
    assert json.loads(payload)["choices"][0]["message"]["role"] == "assistant"
    assert "x-policy-version" in headers
    codes = job.wait(600)
    log = job.output()
    assert codes == [0, 0, 0], log
    metrics = _metrics(job)
    assert [m["step"] for m in metrics] == list(range(1, 13)), log
    assert metrics[-1]["policy/version"] == 12.0
    placement = json.loads((job.out / "placement.json").read_text())
    assert [r["node_ip"] for r in placement["trainer_ranks"]] in (
        [twin4.ips[1], twin4.ips[2]],
        [twin4.ips[2], twin4.ips[1]],
    ), placement
    assert [r["node_ip"] for r in placement["sampler_replicas"]] == [twin4.ips[0]], placement
    assert (job.out / "final_model" / "model.safetensors").is_file()
    _assert_no_process_left(twin4, range(3))


@pytest.mark.timeout(900)
def test_two_sampler_nodes_one_trainer_node_generation_spread_and_pushed(twin3):
    """Topology 2: nodes 0-1 sample (one replica each), node 2 trains; generation uses both
    replicas and every weight push reaches both."""
    job = _start(twin3, 2, 1, "sampler.replicas=2", "trainer.max_steps=6")
    codes = job.wait(840)
    log = job.output()
    assert codes == [0, 0, 0], log
    placement = json.loads((job.out / "placement.json").read_text())
    assert sorted(r["node_ip"] for r in placement["sampler_replicas"]) == twin3.ips[:2], placement
    assert [r["node_ip"] for r in placement["trainer_ranks"]] == [twin3.ips[2]], placement
    replicas = json.loads((job.out / "replicas.json").read_text())
    assert sorted(r["url"].split("//")[1].split(":")[0] for r in replicas) == twin3.ips[:2]
    metrics = _metrics(job)
    assert [m["step"] for m in metrics] == list(range(1, 7)), log
    # Every push reached both replicas. (A background push's stats land in the next step's row.)
    pushes = [m for m in metrics if "weight_sync/replicas_ok" in m]
    assert len(pushes) >= 5, metrics
    assert all(m["weight_sync/replicas_ok"] == 2.0 for m in pushes), pushes
    assert all(m["weight_sync/replicas_failed"] == 0.0 for m in pushes), pushes
    # Both replicas generated, and both generated with pushed weights (versions past 1).
    trained = [json.loads(x) for x in (job.out / "trained_prompts.jsonl").read_text().splitlines()]
    newest: dict[str, int] = {}
    for row in trained:
        for url, v in zip(row["replicas"], row["versions"], strict=True):
            newest[url] = max(newest.get(url, -1), v)
    assert set(newest) == {r["url"] for r in replicas}, (newest, replicas)
    assert all(v >= 2 for v in newest.values()), newest
    _assert_no_process_left(twin3, range(3))


@pytest.mark.timeout(900)
def test_killing_the_trainer_node_launcher_takes_the_whole_job_down(twin3):
    """Topology 3: SIGKILL the trainer node's launcher mid-run: every node exits non-zero within a
    bounded time and no process of the run is left in any namespace."""
    job = _start(twin3, 1, 2, "pipeline.num_trainer_workers=2", "trainer.max_steps=400")
    deadline = time.monotonic() + 480
    while not _metrics(job):
        assert all(p.poll() is None for p in job.procs), job.output()
        assert time.monotonic() < deadline, "no training step:\n" + job.output()
        time.sleep(0.5)
    os.kill(job.procs[1].pid, signal.SIGKILL)
    codes = job.wait(180)  # bound: heartbeat/disconnect, driver grace, Ray stop on every node
    log = job.output()
    assert all(c is not None for c in codes), f"still running 180 s after the kill:\n{log}"
    assert codes[1] == -signal.SIGKILL
    assert codes[0] != 0 and codes[2] != 0, (codes, log)
    assert len(_metrics(job)) < 400
    _assert_no_process_left(twin3, range(3))
