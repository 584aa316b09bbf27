"""Build a tiny, random-init Qwen2 chat model with no hub access.

Owns: a byte-level BPE tokenizer trained locally (Qwen2's normalizer and pre-tokenizer, so
`AutoTokenizer` and vLLM produce the same ids), a ChatML chat template, eos/pad tokens, and a
random-init `Qwen2ForCausalLM` saved as a Hugging Face model folder.
Does not know: tasks, training, serving. Deterministic for a given seed.

    python -m data.tiny_model OUT_DIR [--seed N] [--hidden-size 128] [--layers 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Qwen2's pre-tokenizer split pattern (contractions, letters, single digits, punctuation, spaces).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN]
# ChatML, as Qwen2.5 uses; `add_generation_prompt` opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    """Text the BPE merges are learned from: task vocabulary, tags, letters, digits, English."""
    from data.synthetic import tokenizer_corpus

    lines = list(tokenizer_corpus())
    lines += [
        "<think>\nreasoning\n</think>\n<answer>\nB\n</answer>\nFinal Answer: B",
        "Instructions: Think step-by-step and answer the following multiple-choice question.",
        "The reasoning process and answer should be enclosed within <think> </think> and "
        "<answer> </answer> tags, respectively. The final answer should be on a new line "
        "starting with the phrase 'Final Answer: '. It should be one of 'A', 'B', 'C', 'D'.",
        "Options:\nA. first\nB. second\nC. third\nD. fourth\n",
        "Which of the following is the most common cause of the disease in patients?",
        "the of and to in is that for with as on by was are be which drug treatment",
    ]
    return lines * 4


def build_tokenizer(vocab_size: int = 1024):
    """Train the byte-level BPE (a `tokenizers.Tokenizer`) deterministically."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


# The warm start's demonstrations: MedMCQA-style prompts answered in the reference recipe's layout.
_DEMO_QUESTIONS = (
    "Which of the following drugs is used in the treatment of the disease?",
    "Which of the following is the most common cause of the disease in patients?",
    "Which of the following is the drug of choice for treatment?",
    "Which of the following is not a cause of the disease?",
)
_DEMO_OPTIONS = ("first", "second", "third", "fourth")
_DEMO_REASONS = (
    "the drug is used in the treatment",
    "the most common cause is the first",
    "the reasoning process is that the drug is given",
    "patients with the disease are given the treatment",
)


def format_demonstrations(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (user message, assistant reply) pairs: a MedMCQA-style problem with the reference
    recipe's instructions, answered in its strict layout (`<think>`, `<answer>` with one letter)."""
    import random

    from data.prep_medmcqa import format_problem

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        options = rng.sample(_DEMO_OPTIONS, 4)
        problem = format_problem(rng.choice(_DEMO_QUESTIONS), options)
        reply = f"<think>\n{rng.choice(_DEMO_REASONS)}\n</think>\n<answer>\n{rng.choice('ABCD')}\n</answer>"
        out.append((problem, reply))
    return out


def warm_start(
    model, tokenizer, steps: int, seed: int = 0, lr: float = 3e-3, batch: int = 8
) -> None:
    """A few supervised steps on `format_demonstrations` (loss on the reply and its end-of-turn
    token only), so the tiny model sometimes answers in the reference recipe's layout and GRPO's
    format reward has differences to learn from (from random weights it never does)."""
    import torch

    log.info("tiny model: warm start, %d supervised steps on the answer layout", steps)
    t0 = time.monotonic()
    pairs = format_demonstrations(steps * batch, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small: one thread is faster, far faster on a busy CPU
    model.train()
    try:
        for step in range(steps):
            loss = model(**_demo_batch(tokenizer, pairs[step * batch : (step + 1) * batch])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
        model.eval()
    log.info("tiny model: warm start done in %.1fs (loss %.3f)", time.monotonic() - t0, loss.item())


def _demo_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict:
    """Right-padded input ids, attention mask and labels (-100 outside the replies)."""
    import torch

    rows = []
    for user, reply in pairs:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
        )
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(reply + EOS_TOKEN, add_special_tokens=False)["input_ids"]
        rows.append((p_ids + r_ids, [-100] * len(p_ids) + r_ids))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows]),
        "labels": torch.tensor([y + [-100] * (width - len(y)) for _, y in rows]),
    }


def build_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    vocab_size: int = 1024,
    max_position_embeddings: int = 4096,
    warm_start_steps: int = 0,
) -> Path:
    """Write a Hugging Face model folder to `out_dir` and return its path. `warm_start_steps` > 0
    trains the random model that many supervised steps on the reference recipe's answer layout
    (`warm_start`).

    head_dim = hidden_size / num_heads must be one vLLM's CPU attention supports (32, 64, 80, ...).
    """
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    head_dim, rem = divmod(hidden_size, num_heads)
    if rem or head_dim not in (32, 64, 80, 96, 112, 128, 256):
        raise ValueError(
            f"hidden_size/num_heads = {hidden_size}/{num_heads} gives head_dim {hidden_size / num_heads}; "
            "vLLM's CPU backend needs 32, 64, 80, 96, 112, 128 or 256: change hidden_size or num_heads"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    raw = build_tokenizer(vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        model_max_length=max_position_embeddings,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out)
    # Loading through AutoTokenizer must give the fast tokenizer we trained, not a rebuilt one.
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True))

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=raw.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=raw.token_to_id(EOS_TOKEN),
        pad_token_id=raw.token_to_id(PAD_TOKEN),
        bos_token_id=None,
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.to(torch.float32)
    if warm_start_steps:
        torch.manual_seed(seed)
        warm_start(model, fast, warm_start_steps, seed)
    model.save_pretrained(out, safe_serialization=True)
    gen = {"eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data.tiny_model", description=__doc__.split("\n")[0]
    )
    p.add_argument("out_dir", help="folder to write (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="weight-init seed (same seed, same files)")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument(
        "--warm-start-steps",
        type=int,
        default=0,
        help="supervised steps on the reference recipe's answer layout (0: random weights)",
    )
    a = p.parse_args(argv)
    try:
        out = build_tiny_model(
            a.out_dir,
            a.seed,
            hidden_size=a.hidden_size,
            num_layers=a.layers,
            num_heads=a.heads,
            num_kv_heads=a.kv_heads,
            warm_start_steps=a.warm_start_steps,
        )
    except ValueError as e:
        p.error(str(e))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
