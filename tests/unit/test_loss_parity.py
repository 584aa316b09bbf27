"""Parity of trainer.advantages / trainer.loss / trainer.batch with TRL 1.16's GRPOTrainer.

How TRL is called (no copy of its code): for each case we build a real `trl.GRPOTrainer` on the
tiny Qwen2 model (`use_cpu=True`) with a `rollout_func` (TRL's public hook for custom generation)
that returns fixed prompt/completion token ids and "sampler" logprobs (the model's own logprobs
plus noise, so importance ratios land on both sides of the caps), and a reward function that
returns fixed rewards (some None: unscorable). TRL's own `_generate_and_score_completions` then
pads, masks truncated completions, computes advantages, old/ref logps and the vLLM IS ratio, and
TRL's `compute_loss` gives the loss and logs its metrics. Two attributes are set on the instance,
both values TRL itself would hold in that situation: `use_vllm = True` (TRL computes the IS
correction only when it generated with vLLM, which needs a vLLM server that cannot exist here;
`_last_loaded_step` marks its weights as already synced) and `current_gradient_accumulation_steps`
(normally set by HF's training loop).
Our side computes everything from the same ScoredSamples and the same model weights, and the test
compares advantages, masks, IS ratios, the loss (to 1e-6), TRL's logged metrics, and gradients.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from trainer.advantages import group_advantages
from trainer.batch import collate
from trainer.loss import completion_logps, grpo_loss, importance_sampling_ratio
from trainer.types import ScoredSample

pytestmark = pytest.mark.slow
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

TEMPERATURE = 0.7
MAX_COMPLETION = 12

# (loss_type, beta, IS mode, clip_min, clip_max, mask_truncated, scale_rewards, G, prompts, seed)
CASES = [
    ("grpo", 0.0, "token_truncate", None, 2.0, False, "group", 4, 2, 0),
    ("grpo", 0.04, "sequence_mask", 0.5, 2.0, True, "batch", 3, 3, 1),
    ("bnpo", 0.0, "token_mask", 0.8, 1.25, False, "none", 4, 2, 2),
    ("bnpo", 0.1, "sequence_truncate", 0.5, 3.0, True, "group", 2, 4, 3),
    ("dr_grpo", 0.0, "sequence_mask", None, 3.0, True, "group", 4, 3, 4),
    ("dr_grpo", 0.04, "token_truncate", 0.5, 1.5, False, "batch", 3, 2, 5),
    ("dapo", 0.0, "sequence_truncate", None, 1.2, False, "group", 4, 2, 6),
    ("dapo", 0.04, "token_mask", 0.9, 1.1, True, "none", 2, 3, 7),
    ("dapo", 0.0, "sequence_mask", 0.3, 3.0, True, "group", 8, 1, 8),
]


def _make_rollout(g: torch.Generator, n: int, eos_id: int, vocab: int) -> dict:
    prompts, completions = [], []
    for _ in range(n):
        lp = int(torch.randint(2, 9, (1,), generator=g))
        lc = int(torch.randint(1, MAX_COMPLETION + 1, (1,), generator=g))
        prompts.append(torch.randint(5, vocab, (lp,), generator=g).tolist())
        comp = torch.randint(5, vocab, (lc,), generator=g).tolist()
        if lc < MAX_COMPLETION or torch.rand((), generator=g) < 0.3:
            comp[-1] = eos_id  # finished; the rest are truncated at max length
        completions.append(comp)
    return {"prompt_ids": prompts, "completion_ids": completions}


@pytest.fixture(scope="module")
def trl_env(tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return {
        "path": str(tiny_model_dir),
        "tok": tok,
        "ds": Dataset.from_list([{"prompt": f"p{i}"} for i in range(8)]),
    }


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-beta{c[1]}-{c[2]}-{c[6]}" for c in CASES])
def test_loss_matches_trl(trl_env, case, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    loss_type, beta, is_mode, cmin, cmax, mask_trunc, scale, G, n_prompts, seed = case
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    tok = trl_env["tok"]
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    n = G * n_prompts
    rollout = _make_rollout(g, n, eos_id, len(tok))
    rewards = [float(x) for x in torch.randint(0, 4, (n,), generator=g)]
    rewards[1] = math.nan  # one unscorable completion (reward fn returned None)
    if n_prompts > 1:
        rewards[G : 2 * G] = [1.5] * G  # one zero-std group
    noise = torch.randn(n, MAX_COMPLETION, generator=g) * 0.25

    def rollout_func(prompts, trainer):
        # Sampler logprobs = the model's own logprobs + noise (a sampler that disagrees a bit).
        with torch.no_grad():
            sb = collate(
                _samples(rollout, rewards, [[0.0] * len(c) for c in rollout["completion_ids"]]),
                tok.pad_token_id,
            )
            lp, _ = completion_logps(
                trainer.model, sb.input_ids, sb.attention_mask, sb.completion_length, TEMPERATURE
            )
        logprobs = [
            (lp[i, : len(c)] + noise[i, : len(c)]).tolist()
            for i, c in enumerate(rollout["completion_ids"])
        ]
        rollout["logprobs"] = logprobs
        return dict(rollout)

    def reward_fn(completions, **kwargs):
        return [None if math.isnan(r) else r for r in rewards]

    args = GRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=n, num_generations=G,
        loss_type=loss_type, beta=beta, epsilon=0.2, epsilon_high=0.28, scale_rewards=scale,
        max_completion_length=MAX_COMPLETION, temperature=TEMPERATURE, mask_truncated_completions=mask_trunc,
        vllm_importance_sampling_correction=True, vllm_importance_sampling_mode=is_mode,
        vllm_importance_sampling_clip_min=cmin, vllm_importance_sampling_clip_max=cmax,
        report_to=[], save_strategy="no", seed=seed,
    )  # fmt: skip
    trl = GRPOTrainer(
        model=trl_env["path"],
        reward_funcs=reward_fn,
        args=args,
        train_dataset=trl_env["ds"],
        rollout_func=rollout_func,
    )
    trl.model.train()
    trl.use_vllm = True
    trl._last_loaded_step = trl.state.global_step
    trl.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    out = trl._generate_and_score_completions([{"prompt": f"p{i // G}"} for i in range(n)])

    # --- ours, from the same samples and the same weights
    adv = group_advantages(torch.tensor(rewards), G, scale)
    torch.testing.assert_close(adv.advantages, out["advantages"], atol=1e-6, rtol=0)
    m = trl._metrics["train"]
    assert adv.reward == pytest.approx(m["reward"][-1], abs=1e-6)
    assert adv.reward_std == pytest.approx(m["reward_std"][-1], abs=1e-6)
    assert adv.frac_reward_zero_std == pytest.approx(m["frac_reward_zero_std"][-1], abs=1e-6)

    samples = _samples(rollout, rewards, rollout["logprobs"], adv.advantages.tolist(), eos_id)
    batch = collate(samples, tok.pad_token_id, mask_truncated_completions=mask_trunc)
    assert torch.equal(batch.input_ids, torch.cat([out["prompt_ids"], out["completion_ids"]], 1))
    assert torch.equal(batch.completion_mask, out["completion_mask"])
    assert torch.equal(
        batch.attention_mask, torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    )
    torch.testing.assert_close(
        batch.sampler_logprobs, out["sampling_per_token_logps"].float(), atol=1e-6, rtol=0
    )

    model = trl.model
    logps, ent = completion_logps(
        model, batch.input_ids, batch.attention_mask, batch.completion_length, TEMPERATURE
    )
    is_out = importance_sampling_ratio(
        logps, batch.sampler_logprobs, batch.completion_mask, is_mode, cmin, cmax
    )
    torch.testing.assert_close(is_out.ratio, out["importance_sampling_ratio"], atol=1e-5, rtol=1e-5)

    # An older policy produced the batch: shift old logps so the clipping paths are exercised.
    shift = torch.randn(logps.shape, generator=g) * 0.3 * batch.completion_mask
    out["old_per_token_logps"] = out["old_per_token_logps"] + shift
    ref = out.get("ref_per_token_logps")

    trl_loss = trl.compute_loss(model, out)
    trl_grads = torch.autograd.grad(trl_loss, [model.lm_head.weight])[0]
    ours = grpo_loss(
        logps, batch.advantages, batch.completion_mask, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28,
        old_logps=logps.detach() + shift, beta=beta, ref_logps=ref, is_ratio=is_out.ratio, entropies=ent,
        max_completion_length=MAX_COMPLETION, num_items_in_batch=batch.num_loss_tokens,
    )  # fmt: skip
    our_grads = torch.autograd.grad(ours.loss, [model.lm_head.weight])[0]
    assert abs(ours.loss.item() - trl_loss.item()) < 1e-6, (ours.loss.item(), trl_loss.item())
    assert abs(trl_loss.item()) > 1e-4  # a degenerate zero loss would prove nothing
    torch.testing.assert_close(our_grads, trl_grads, atol=1e-6, rtol=1e-4)

    metrics = ours.local_metrics()
    names = ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "entropy"]
    names += ["kl"] if beta else []
    for name in names:
        assert metrics[name] == pytest.approx(m[name][-1], abs=1e-6), name
    for name in (
        "sampling/importance_sampling_ratio/mean",
        "sampling/sampling_logp_difference/max",
    ):
        assert is_out.metrics[name] == pytest.approx(m[name][-1], rel=1e-4, abs=1e-6), name


def _samples(rollout, rewards, logprobs, advantages=None, eos_id=None) -> list[ScoredSample]:
    out = []
    for i, (p, c) in enumerate(zip(rollout["prompt_ids"], rollout["completion_ids"], strict=True)):
        finished = eos_id is None or c[-1] == eos_id
        out.append(
            ScoredSample(
                prompt_id=f"p{i}", group_index=i, prompt_token_ids=p, completion_token_ids=c,
                sampler_logprobs=list(logprobs[i]), finish_reason="stop" if finished else "length",
                policy_version=0, reward=rewards[i], advantage=0.0 if advantages is None else advantages[i],
            )
        )  # fmt: skip
    return out
