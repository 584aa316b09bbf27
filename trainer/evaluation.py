"""Evaluation: the eval prompts sampled with the rollout's settings (one completion each) and
scored by the run's reward scorer.

Owns: the eval metrics (`eval_reward`, `eval_rewards/<name>/mean`). Does not know: when eval
runs (the driver's schedule), which replicas answer, how rewards are computed.
"""

from __future__ import annotations

import math
from typing import Any

from trainer.prompts import Prompt
from trainer.sampling import eval_sampling


async def evaluate(client: Any, scorer: Any, trainer_cfg: Any, evals: list[Prompt]) -> dict:
    """Sample each eval prompt once and score it; unscored items are left out of the means."""
    spec, n = eval_sampling(trainer_cfg)
    groups = await client.generate([p.token_ids for p in evals], n, spec)
    comps = [[{"role": "assistant", "content": g.completions[0].text}] for g in groups]
    columns: dict[str, list] = {k: [p.columns.get(k) for p in evals] for k in evals[0].columns}
    columns["completion_ids"] = [g.completions[0].token_ids for g in groups]
    scored = await scorer.ascore([p.messages for p in evals], comps, columns)
    out = {"eval_reward": nanmean(scored.total)}
    for name, vals in scored.per_func.items():
        out[f"eval_rewards/{name}/mean"] = nanmean(vals)
    return out


def nanmean(vals: list) -> float:
    xs = [float(v) for v in vals if v is not None and not math.isnan(float(v))]
    return sum(xs) / len(xs) if xs else float("nan")
