"""A public flood during training: the trainer's step time with and without a flood of long
public /v1/completions requests on the live sampler, and how many of them got 429.

    python bench/bench_public_flood.py --steps 12 --flood 64

One command runs the same pipeline twice on the embedded default task (configs/local.yaml):
once alone (the baseline), once while `--flood` concurrent clients each send long requests with
the run's API key for as long as it trains. It prints the steady-state step time of both, their
ratio, and the flood's HTTP statuses: beyond `sampler.limits.max_public_inflight` per replica
the sampler answers 429 at once, and the trainer's requests go first in vLLM's scheduler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import REPO, pipeline_env, run_pipeline, summarise  # noqa: E402


class Flood:
    """`clients` concurrent public requesters against the run in `out`, from the moment its
    replica and key files exist until `stop` is set."""

    def __init__(self, out: Path, clients: int, max_tokens: int) -> None:
        self.out, self.clients, self.max_tokens = out, clients, max_tokens
        self.stop = threading.Event()
        self.statuses: Counter[str] = Counter()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        import httpx

        replicas, key_file = self.out / "replicas.json", self.out / "sampler_api_key"
        while not (replicas.exists() and key_file.exists()) and not self.stop.is_set():
            await asyncio.sleep(0.5)  # polling files another process writes
        if self.stop.is_set():
            return
        url = json.loads(replicas.read_text())[0]["url"]
        key = key_file.read_text().strip()
        async with httpx.AsyncClient(timeout=600) as http:
            await asyncio.gather(*(self._client(http, url, key) for _ in range(self.clients)))

    async def _client(self, http, url: str, key: str) -> None:
        import httpx

        body = {
            "model": "policy",  # sampler.served_model_name in configs/local.yaml
            "prompt": "Write a very long story about a sampler under load.",
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
        }
        while not self.stop.is_set():
            try:
                r = await http.post(
                    f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                self.statuses[str(r.status_code)] += 1
                if r.status_code == 429:
                    await asyncio.sleep(0.2)  # a polite client's retry delay
            except httpx.HTTPError as e:
                self.statuses[type(e).__name__] += 1
                await asyncio.sleep(0.5)  # the replica is restarting or the run ended


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--flood", type=int, default=64, help="concurrent public clients")
    p.add_argument("--flood-tokens", type=int, default=256, help="max_tokens of each request")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args()
    env = pipeline_env()
    tmp = Path(tempfile.mkdtemp(prefix="bench_flood_"))
    cfg = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    cfg["trainer"].update(max_steps=a.steps, save_steps=10_000, eval_steps=None)
    cfg["mlflow"]["log_model"] = False
    cfg_path = tmp / "bench.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    batch = cfg["trainer"].get("per_device_train_batch_size") or 16
    k = cfg.get("pipeline", {}).get("max_staleness", 1)

    rows = []
    for name, clients in (("alone", 0), (f"flood of {a.flood}", a.flood)):
        out = tmp / f"run_{clients}"
        flood = Flood(out, clients, a.flood_tokens)
        flood.thread.start()
        t0 = time.perf_counter()
        try:
            res = run_pipeline(cfg_path, out, k, env, a.set)
        finally:
            flood.stop.set()
            flood.thread.join(timeout=60)
        row = summarise(name, res["metrics"], batch, a.warmup)
        row.update(wall_s=time.perf_counter() - t0, flood_statuses=dict(flood.statuses))
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["step_s"]
    print("\nrun                  step_s   vs alone   flood statuses")
    for r in rows:
        print(
            f"{r['name']:<20} {r['step_s']:6.2f}   {r['step_s'] / base:6.2f}x   {r['flood_statuses']}"
        )


if __name__ == "__main__":
    main()
