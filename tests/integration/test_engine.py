"""PolicyEngine under real DeepSpeed ZeRO-2 / ZeRO-3 on 2 gloo processes (trainer.dist_launch).

Each test launches 2 ranks that train the tiny Qwen2 model on synthetic ScoredSamples and checks:
parameters change and stay identical across ranks; gradient accumulation (2 x 2) gives the same
update and grad norm as one micro-batch of 4; `iter_named_params_for_sync` equals what `save_hf`
wrote (and transformers loads it); and save -> load -> next step equals the uninterrupted next step.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

pytestmark = pytest.mark.slow

G = 2
MBS = 2
GAS = 2


def _settings(stage: int | None, mbs: int, gas: int, **kw):
    from trainer.config import GRPOSettings

    base = dict(
        learning_rate=1e-3, per_device_train_batch_size=mbs, gradient_accumulation_steps=gas, num_generations=G,
        max_completion_length=8, zero_stage=stage, lr_scheduler_type="linear", warmup_steps=0, temperature=0.9,
        loss_type="dapo", vllm_importance_sampling_mode="token_truncate", max_grad_norm=1.0,
    )  # fmt: skip
    base.update(kw)
    return GRPOSettings(**base)


def _batch(seed: int, n: int, pad_id: int, vocab: int):
    """A rank's share of a step: n samples in whole groups, rewards -> advantages like the loop."""
    from trainer.advantages import group_advantages
    from trainer.batch import collate
    from trainer.types import ScoredSample

    rng = random.Random(seed)
    samples = []
    for i in range(n):
        lc = rng.randint(2, 8)
        samples.append(
            ScoredSample(
                prompt_id=f"s{seed}-p{i // G}", group_index=i % G,
                prompt_token_ids=[rng.randrange(5, vocab) for _ in range(rng.randint(2, 6))],
                completion_token_ids=[rng.randrange(5, vocab) for _ in range(lc)],
                sampler_logprobs=[-rng.uniform(5.5, 7.5) for _ in range(lc)],
                finish_reason="stop" if lc < 8 else "length", policy_version=0, reward=float(rng.randint(0, 3)),
            )
        )  # fmt: skip
    adv = group_advantages(torch.tensor([s.reward for s in samples]), G, "group").advantages
    for s, a in zip(samples, adv.tolist(), strict=True):
        s.advantage = a
    return collate(samples, pad_id)


def _rank_checksums(engine) -> torch.Tensor:
    """Per-parameter (sum, abs-sum) of this rank's full view of the weights."""
    import deepspeed

    params = [p for _, p in sorted(engine.module.named_parameters())]
    ctx = deepspeed.zero.GatheredParameters(params) if engine.zero_stage == 3 else torch.no_grad()
    with ctx, torch.no_grad():
        return torch.tensor(
            [[p.double().sum().item(), p.double().abs().sum().item()] for p in params]
        )


def _worker(model_dir: str, out_dir: str, stage: int, use_peft: bool, beta: float) -> dict:
    import torch.distributed as dist

    from trainer.config import ModelConfig
    from trainer.engine import PolicyEngine

    rank, world = dist.get_rank(), dist.get_world_size()
    mcfg = ModelConfig(
        name_or_path=model_dir, use_peft=use_peft, lora_r=4, lora_alpha=8, lora_dropout=0.0
    )
    kw = {"learning_rate": 2e-2, "beta": beta} if use_peft else {"beta": beta}
    a = PolicyEngine(model_dir, _settings(stage, MBS, GAS, **kw), mcfg, total_steps=4)
    pad, vocab = a.tokenizer.pad_token_id, len(a.tokenizer)
    b1 = _batch(100 + rank, MBS * GAS, pad, vocab)
    b2 = _batch(200 + rank, MBS * GAS, pad, vocab)
    res: dict = {"rank": rank, "world": world}
    res["w0"] = dict(a.iter_named_params_for_sync(bucket_bytes=64 << 10))
    try:  # a wrong share is refused before any collective, naming the settings
        a.train_step(b1.slice(0, 1))
    except ValueError as e:
        res["wrong_size_error"] = str(e)
    res["m1"] = a.train_step(b1)
    res["w1"] = dict(a.iter_named_params_for_sync(bucket_bytes=64 << 10))
    sums = _rank_checksums(a)
    gathered = [torch.zeros_like(sums) for _ in range(world)]
    dist.all_gather(gathered, sums)
    res["rank_sums"] = gathered
    ckpt = os.path.join(out_dir, "ckpt")
    a.save_checkpoint(ckpt, {"cursor": 7, "policy_version": 1})
    res["m2"] = a.train_step(b2)
    res["w2"] = dict(a.iter_named_params_for_sync(bucket_bytes=1 << 30))
    a.save_hf(os.path.join(out_dir, "hf"))
    res["step_a"] = a.step
    del a

    # Same first step as one micro-batch of 4: the update must not depend on accumulation.
    big = PolicyEngine(model_dir, _settings(stage, MBS * GAS, 1, **kw), mcfg, total_steps=4)
    res["m1_big"] = big.train_step(b1)
    res["w1_big"] = dict(big.iter_named_params_for_sync())
    del big

    # Resume from the checkpoint taken after step 1, then take step 2 again.
    c = PolicyEngine(model_dir, _settings(stage, MBS, GAS, **kw), mcfg, total_steps=4)
    res["client_state"] = c.load_checkpoint(ckpt)
    res["step_c_loaded"] = c.step
    res["m2_resumed"] = c.train_step(b2)
    res["w2_resumed"] = dict(c.iter_named_params_for_sync())
    return res


def _run(
    tiny_model_dir, tmp_path, stage: int, use_peft: bool = False, beta: float = 0.0
) -> list[dict]:
    from trainer.dist_launch import run_distributed

    # An empty extensions folder: anything DeepSpeed compiles for this run lands there.
    env = {
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions"),
    }
    return run_distributed(
        _worker,
        2,
        str(tiny_model_dir),
        str(tmp_path),
        stage,
        use_peft,
        beta,
        timeout_s=420,
        env=env,
    )


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _check(results: list[dict], tmp_path, use_peft: bool, beta: float = 0.0) -> None:
    r0, r1 = results
    assert "per_device_train_batch_size x gradient_accumulation_steps" in r0["wrong_size_error"]
    # the KL term is logged only with a reference; it is ~0 at step 1 (policy == reference) and
    # positive once the policy has moved
    assert ("kl" in r0["m1"]) == (beta > 0)
    if beta:
        assert abs(r0["m1"]["kl"]) < 1e-6 and r0["m2"]["kl"] > 1e-9
    # only rank 0 receives the gathered weights
    assert r0["w1"] and not r1["w1"] and not r1["w2"]
    w0, w1, w2 = r0["w0"], r0["w1"], r0["w2"]
    assert _max_diff(w0, w1) > 1e-4 and _max_diff(w1, w2) > 1e-4, (
        "training did not change the weights"
    )
    if use_peft:  # merged LoRA: only the adapted projections move, names are the base model's
        assert not any("lora" in k or "base_layer" in k for k in w1)
        assert torch.equal(w0["model.embed_tokens.weight"], w1["model.embed_tokens.weight"])
    # every rank holds the same weights
    s = r0["rank_sums"]
    torch.testing.assert_close(s[0], s[1], rtol=0, atol=0)
    # metrics are reduced over ranks: both ranks report the same numbers
    for key in (
        "loss",
        "grad_norm",
        "entropy",
        "clip_ratio/region_mean",
        "sampling/importance_sampling_ratio/mean",
    ):
        assert r0["m1"][key] == pytest.approx(r1["m1"][key], rel=1e-9), key
        assert torch.isfinite(torch.tensor(r0["m1"][key])), key
    assert r0["m1"]["grad_norm"] > 0
    # linear decay over total_steps=4: step 2 uses 3/4 of the first step's rate
    assert r0["m2"]["learning_rate"] == pytest.approx(0.75 * r0["m1"]["learning_rate"], rel=1e-9)
    # gradient accumulation == one big micro-batch
    assert r0["m1"]["grad_norm"] == pytest.approx(r0["m1_big"]["grad_norm"], rel=1e-5)
    assert r0["m1"]["loss"] == pytest.approx(r0["m1_big"]["loss"], rel=1e-5, abs=1e-7)
    assert _max_diff(r0["w1_big"], w1) < 1e-5
    # resume: the same next step as the uninterrupted run
    assert r0["client_state"] == {"cursor": 7, "policy_version": 1} and r0["step_c_loaded"] == 1
    assert r0["step_a"] == 2
    assert r0["m2_resumed"]["loss"] == pytest.approx(r0["m2"]["loss"], rel=1e-6, abs=1e-8)
    assert _max_diff(r0["w2_resumed"], w2) < 1e-6
    # save_hf wrote exactly the synced weights, and transformers loads the folder
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    hf = tmp_path / "hf"
    saved = load_file(str(hf / "model.safetensors"))
    assert saved.keys() == w2.keys()
    assert all(torch.equal(saved[k], w2[k]) for k in saved)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    loaded = dict(model.named_parameters())
    assert all(torch.equal(loaded[k].detach(), w2[k]) for k in w2)
    assert (hf / "tokenizer_config.json").is_file()


def _single_rank_worker(model_dir: str) -> dict:
    """World size 1 trains on both ranks' first batches: the step must equal the 2-rank step.

    It runs the single-process defaults (ZeRO stage 0) with the per-tensor AdamW loop, against the
    2-rank ZeRO-2 run with the fused AdamW (the default): both paths give one update.
    """
    from trainer.batch import collate
    from trainer.config import ModelConfig
    from trainer.engine import PolicyEngine

    e = PolicyEngine(
        model_dir,
        _settings(None, 2 * MBS, GAS, optim="adamw_torch"),
        ModelConfig(name_or_path=model_dir),
        total_steps=4,
    )
    pad, vocab = e.tokenizer.pad_token_id, len(e.tokenizer)
    parts = [_batch(100 + r, MBS * GAS, pad, vocab) for r in range(2)]
    samples = []  # re-collate both shares into one batch (padding widths differ; the masks make it moot)
    for part in parts:
        samples += _unbatch(part, pad)
    m = e.train_step(collate(samples, pad))
    return {"m1": m, "w1": dict(e.iter_named_params_for_sync()), "stage": e.zero_stage}


def _unbatch(batch, pad: int) -> list:
    from trainer.types import ScoredSample

    out = []
    p = batch.input_ids.size(1) - batch.completion_length
    for i in range(batch.size):
        keep = batch.attention_mask[i, :p].bool()
        n = int(batch.completion_mask[i].sum())
        out.append(
            ScoredSample(
                prompt_id=batch.prompt_ids[i], group_index=i % G, prompt_token_ids=batch.input_ids[i, :p][keep].tolist(),
                completion_token_ids=batch.input_ids[i, p : p + n].tolist(),
                sampler_logprobs=batch.sampler_logprobs[i, :n].tolist(), finish_reason="stop", policy_version=0,
                reward=0.0, advantage=float(batch.advantages[i]),
            )
        )  # fmt: skip
    return out


@pytest.mark.parametrize("stage, beta", [(2, 0.0), (3, 0.04)])
def test_engine_zero(tiny_model_dir, tmp_path, stage, beta):
    results = _run(tiny_model_dir, tmp_path, stage, beta=beta)
    _check(results, tmp_path, use_peft=False, beta=beta)
    # No C++ op build on the CPU path (it cost every new environment 30-55 s of start-up).
    built = sorted(p.name for p in (tmp_path / "torch_extensions").rglob("*.so"))
    assert built == [], built
    # DeepSpeed's real files pass the resume checks (whole torch zips, both ranks' RNG files).
    from trainer.checkpoints import problems, write_marker

    write_marker(tmp_path / "ckpt", {"step": 1, "cursor": {}, "version": 1, "world_size": 2})
    assert problems(tmp_path / "ckpt", world_size=2) == []
    if stage == 2:
        # The loss is normalised per world size like TRL's (DeepSpeed averages gradients over ranks):
        # one process on the union of both shares takes the same step.
        from trainer.dist_launch import run_distributed

        (single,) = run_distributed(
            _single_rank_worker, 1, str(tiny_model_dir), timeout_s=300, env={"OMP_NUM_THREADS": "1"}
        )
        assert single["stage"] == 0
        assert single["m1"]["grad_norm"] == pytest.approx(results[0]["m1"]["grad_norm"], rel=1e-5)
        assert single["m1"]["loss"] == pytest.approx(results[0]["m1"]["loss"], rel=1e-5, abs=1e-7)
        assert _max_diff(single["w1"], results[0]["w1"]) < 1e-5


def test_engine_lora_zero2(tiny_model_dir, tmp_path):
    # beta > 0 with LoRA: the reference is the base model with the adapters disabled
    _check(
        _run(tiny_model_dir, tmp_path, 2, use_peft=True, beta=0.04),
        tmp_path,
        use_peft=True,
        beta=0.04,
    )


@pytest.mark.parametrize(
    "user, match",
    [
        ({"train_micro_batch_size_per_gpu": 3}, "train_micro_batch_size_per_gpu=3 disagrees"),
        ({"gradient_accumulation_steps": 5}, "gradient_accumulation_steps=5 disagrees"),
    ],
)
def test_ds_config_rejects_conflicting_batch_keys(user, match):
    from trainer.ds_config import build_ds_config

    with pytest.raises(ValueError, match=match):
        build_ds_config(_settings(3, MBS, GAS), 2, user)


def test_ds_config_defaults_and_auto_values(tmp_path):
    import json

    from trainer.ds_config import build_ds_config

    cfg = build_ds_config(_settings(3, MBS, GAS), 2)
    assert cfg["zero_optimization"]["stage"] == 3
    # unset: nothing to partition on one process (stage 0), ZeRO-2 across several
    assert build_ds_config(_settings(None, MBS, GAS), 1)["zero_optimization"]["stage"] == 0
    assert build_ds_config(_settings(None, MBS, GAS), 4)["zero_optimization"]["stage"] == 2
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (MBS, GAS)
    assert cfg["train_batch_size"] == MBS * GAS * 2 and cfg["gradient_clipping"] == 1.0
    assert cfg["zero_allow_untested_optimizer"] is True and cfg["bf16"]["enabled"] is False
    user = {
        "zero_optimization": {"stage": "auto", "overlap_comm": True},
        "train_batch_size": "auto",
    }
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    cfg = build_ds_config(_settings(2, MBS, GAS, deepspeed=str(path)), 2)
    assert cfg["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert cfg["train_batch_size"] == MBS * GAS * 2
    with pytest.raises(FileNotFoundError, match="trainer.deepspeed"):
        build_ds_config(_settings(2, MBS, GAS, deepspeed=str(tmp_path / "missing.json")), 2)


def test_engine_needs_an_initialised_process_group(tiny_model_dir):
    import torch.distributed as dist

    from trainer.config import ModelConfig
    from trainer.engine import PolicyEngine

    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="needs torch.distributed initialised"):
        PolicyEngine(str(tiny_model_dir), _settings(2, MBS, GAS), ModelConfig(), total_steps=1)
