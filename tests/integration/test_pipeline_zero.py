"""DeepSpeed ZeRO-2 and ZeRO-3 on 2 trainer processes against a real sampler (also one with
tensor parallelism 2): parameters change, and the sampler's greedy output after the last push
equals transformers' output of the trained weights."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


# (ZeRO stage, sampler tensor-parallel size): TP 2 makes both vLLM workers receivers of each push.
@pytest.mark.parametrize("stage,tp", [(2, 1), (3, 1), (2, 2)], ids=["zero2", "zero3", "zero2-tp2"])
def test_two_rank_zero_training_reaches_the_sampler(tmp_path, stage, tp):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from sampler.client import SamplingSpec
    from trainer.config_loading import load_config
    from trainer.driver import Run

    out = tmp_path / "run"
    cfg = load_config(
        REPO / "configs" / "local.yaml",
        {
            "trainer.output_dir": str(out),
            "trainer.zero_stage": stage,
            "sampler.tensor_parallel_size": tp,
            "pipeline.num_trainer_workers": 2,
            "trainer.per_device_train_batch_size": 16,
            "trainer.max_steps": 2,
            "trainer.eval_steps": None,
            "trainer.save_steps": 100,
            "mlflow.log_model": False,
            "pipeline.max_staleness": 0,
            "pipeline.ray_num_cpus": 4,
        },
    )
    run = Run(cfg)
    greedy: dict = {}

    async def go() -> None:
        try:
            assert await run.run_async() == 0
            prompt = run.orch.prompts[0].token_ids
            [res] = await run.client.generate(
                [prompt], 1, SamplingSpec(max_tokens=12, temperature=0.0)
            )
            greedy.update(
                prompt=prompt, tokens=res.completions[0].token_ids, version=res.policy_version
            )
        finally:
            await run.shutdown()

    asyncio.run(go())
    assert greedy["version"] == 2
    base = load_file(out / "base_model" / "model.safetensors")
    final = load_file(out / "final_model" / "model.safetensors")
    changed = [k for k in base if not torch.equal(base[k], final[k])]
    assert len(changed) >= len(base) // 2, f"only {changed} changed"
    model = AutoModelForCausalLM.from_pretrained(out / "final_model", torch_dtype=torch.float32)
    ids = torch.tensor([greedy["prompt"]])
    gen = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False
    )
    hf_tokens = gen[0, ids.shape[1] :].tolist()
    eos = model.config.eos_token_id
    if eos in hf_tokens:  # vLLM includes the eos token it stopped on; transformers may pad after it
        hf_tokens = hf_tokens[: hf_tokens.index(eos) + 1]
    assert greedy["tokens"] == hf_tokens
