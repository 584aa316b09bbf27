"""trainer.loss on hand-computed cases: log-probs, clipping, normalisations, KL, IS correction."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.loss import grpo_loss, importance_sampling_ratio, token_logps_and_entropy


def test_token_logps_and_entropy_match_the_definition():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    for temp in (1.0, 0.6):
        lp, ent = token_logps_and_entropy(logits, targets, temp, chunk_rows=3)
        logsm = torch.log_softmax(logits / temp, -1)
        torch.testing.assert_close(lp, logsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
        torch.testing.assert_close(ent, -(logsm.exp() * logsm).sum(-1))
    with pytest.raises(ValueError, match="temperature"):
        token_logps_and_entropy(logits, targets, 0.0)


def _inputs():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -2.0])
    return logps, mask, adv


def test_on_policy_loss_is_minus_the_advantage_per_normalisation():
    logps, mask, adv = _inputs()
    # on-policy (old = current) every ratio is 1, so the per-token loss is -advantage
    grpo = grpo_loss(logps, adv, mask, loss_type="grpo").loss
    assert grpo.item() == pytest.approx(-(1.0 - 2.0) / 2)  # mean of per-sequence means
    bnpo = grpo_loss(logps, adv, mask, loss_type="bnpo").loss
    assert bnpo.item() == pytest.approx(-(3 * 1.0 - 2 * 2.0) / 5)
    dr = grpo_loss(logps, adv, mask, loss_type="dr_grpo", max_completion_length=4).loss
    assert dr.item() == pytest.approx(-(3 - 4) / (2 * 4))
    dapo = grpo_loss(
        logps, adv, mask, loss_type="dapo", num_items_in_batch=10, num_processes=2
    ).loss
    assert dapo.item() == pytest.approx(-(3 - 4) / (10 / 2))
    acc = grpo_loss(logps, adv, mask, loss_type="grpo", gradient_accumulation_steps=4).loss
    assert acc.item() == pytest.approx(grpo.item() / 4)
    # the gradient is the policy gradient: -A * mask / normaliser on each token
    (g,) = torch.autograd.grad(bnpo, logps)
    torch.testing.assert_close(g, -adv.unsqueeze(1) * mask / 5)


def test_clipping_stops_the_gradient_and_is_counted():
    logps = torch.tensor([[0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    old = torch.log(torch.tensor([[0.5, 0.9, 1.5, 1.0]]))  # ratios 2.0, 1.11, 0.67, 1.0
    mask = torch.ones(1, 4)
    out = grpo_loss(
        logps,
        torch.tensor([1.0]),
        mask,
        loss_type="bnpo",
        old_logps=old,
        epsilon_low=0.2,
        epsilon_high=0.28,
    )
    (g,) = torch.autograd.grad(out.loss, logps)
    assert g[0, 0] == 0.0  # ratio 2 > 1.28 with A > 0: clipped, no gradient
    assert g[0, 1] != 0.0 and g[0, 2] != 0.0 and g[0, 3] != 0.0
    m = out.local_metrics()
    assert m["clip_ratio/high_mean"] == pytest.approx(0.25)
    assert m["clip_ratio/low_mean"] == 0.0  # ratio 0.67 < 0.8 but A > 0: the low clip does not bind
    neg = grpo_loss(
        logps, torch.tensor([-1.0]), mask, loss_type="bnpo", old_logps=old
    ).local_metrics()
    assert neg["clip_ratio/low_mean"] == pytest.approx(0.25) and neg[
        "clip_ratio/region_mean"
    ] == pytest.approx(0.25)


def test_kl_k3_penalty():
    logps, mask, adv = _inputs()
    same = grpo_loss(logps, adv, mask, loss_type="bnpo", beta=0.5, ref_logps=logps.detach())
    assert same.local_metrics()["kl"] == pytest.approx(0.0)
    ref = logps.detach() - 0.5
    out = grpo_loss(logps, adv, mask, loss_type="bnpo", beta=0.5, ref_logps=ref)
    k3 = math.exp(-0.5) + 0.5 - 1
    assert out.local_metrics()["kl"] == pytest.approx(k3, rel=1e-6)
    assert out.loss.item() == pytest.approx(same.loss.item() + 0.5 * k3, rel=1e-6)


def test_is_ratio_modes():
    old = torch.zeros(2, 3)
    sampler = torch.tensor([[-1.5, 0.0, 0.5], [0.2, 0.2, math.nan]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1]])
    tok = importance_sampling_ratio(
        old, sampler, mask, "token_truncate", clip_min=None, clip_max=3.0
    )
    torch.testing.assert_close(tok.ratio[0], torch.tensor([3.0, 1.0, math.exp(-0.5)]))
    assert tok.ratio[1, 2] == 1.0  # unknown sampler logprob: no correction
    tmask = importance_sampling_ratio(old, sampler, mask, "token_mask", clip_min=0.7, clip_max=3.0)
    torch.testing.assert_close(tmask.ratio[0], torch.tensor([0.0, 1.0, 0.0]))
    seq = importance_sampling_ratio(old, sampler, mask, "sequence_mask", clip_max=2.0)
    assert seq.ratio.shape == (2, 1)
    assert seq.ratio[0, 0] == 0.0  # exp(1.0) > 2: whole sequence dropped
    assert seq.ratio[1, 0] == pytest.approx(math.exp(-0.4))
    seqt = importance_sampling_ratio(old, sampler, mask, "sequence_truncate", clip_max=2.0)
    assert seqt.ratio[0, 0] == 2.0
    assert tok.metrics["sampling/importance_sampling_ratio/max"] == 3.0
    assert tok.metrics["sampling/sampling_logp_difference/max"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="vllm_importance_sampling_mode='tok'"):
        importance_sampling_ratio(old, sampler, mask, "tok")  # type: ignore[arg-type]


def test_is_ratio_multiplies_the_loss():
    logps, mask, adv = _inputs()
    ratio = torch.full((2, 1), 0.5)
    base = grpo_loss(logps, adv, mask, loss_type="bnpo").loss
    scaled = grpo_loss(logps, adv, mask, loss_type="bnpo", is_ratio=ratio).loss
    assert scaled.item() == pytest.approx(0.5 * base.item())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_type": "ppo"}, "loss_type='ppo' is unknown"),
        ({"loss_type": "grpo", "beta": 0.1}, "beta != 0 needs ref_logps"),
        ({"loss_type": "dr_grpo"}, "needs max_completion_length"),
        ({"loss_type": "dapo"}, "needs num_items_in_batch"),
    ],
)
def test_bad_arguments_name_the_setting(kwargs, match):
    logps, mask, adv = _inputs()
    with pytest.raises(ValueError, match=match):
        grpo_loss(logps, adv, mask, **kwargs)


def test_is_correction_of_a_completion_that_spans_two_versions():
    """An in-flight update split a completion: tokens 0-2 were sampled by weights v (logprobs
    `p_old`), tokens 3-5 by v+1 (`p_new`). The trainer scores it with v+1 (`p_new`). The
    correction must use each token's own sampling logprob: the new span is on-policy (ratio 1),
    the old span is corrected token by token, and the sequence ratio is the old span's product."""
    p_old = torch.tensor([-1.2, -0.4, -2.0])
    p_new = torch.tensor([-0.9, -0.7, -1.5, -0.3, -1.1, -0.6])
    sampler = torch.cat([p_old, p_new[3:]]).unsqueeze(0)  # what the sampler reported, per token
    trainer = p_new.unsqueeze(0)
    mask = torch.ones(1, 6)
    tok = importance_sampling_ratio(
        trainer, sampler, mask, "token_truncate", clip_min=None, clip_max=10.0
    )
    expected_old = torch.exp(p_new[:3] - p_old)
    torch.testing.assert_close(tok.ratio[0], torch.cat([expected_old, torch.ones(3)]))
    seq = importance_sampling_ratio(trainer, sampler, mask, "sequence_truncate", clip_max=10.0)
    assert seq.ratio[0, 0].item() == pytest.approx(expected_old.prod().item(), rel=1e-6)
    # Labelling the whole completion with either version's logprobs would be wrong:
    assert not torch.allclose(tok.ratio[0], torch.ones(6))
