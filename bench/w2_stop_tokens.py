"""Choose the stop tokens of the long-tail workload W2 (bench/presets.py `W2_WORKLOAD`).

    .venv/bin/python bench/w2_stop_tokens.py --model 25m --target-mean 150

A random model never says eos on its own schedule, so W2 makes a few token ids stop tokens: with
a total stop probability q per token, a completion's length is roughly geometric with mean 1/q and
a long tail (the longest of 16 is ~3.4x the mean). This script measures the random model's mean
probability of every token over sampled positions (temperature 1, the benchmark's prompts),
picks the likeliest non-special tokens that keep their mass plus eos's under 1/target, and
then samples completions with them as stop tokens to print the lengths they give. The chosen ids
are recorded in `W2_WORKLOAD`; rerun this when the tiny model's build or tokenizer changes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(REPO))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.presets import MODEL_PRESETS, add_model_argument
    from data.synthetic import generate_rows
    from data.tiny_model import build_tiny_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_argument(p, default="25m")
    p.add_argument("--target-mean", type=float, default=150.0)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=4, help="completions per prompt")
    p.add_argument("--probe-tokens", type=int, default=64, help="positions measured per sample")
    p.add_argument("--max-tokens", type=int, default=1024)
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)

    path = build_tiny_model(Path(tempfile.mkdtemp()) / "m", seed=0, **MODEL_PRESETS[a.model])
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = generate_rows("train", a.prompts, classes=["digits"])
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": r["problem"]}], add_generation_prompt=True, tokenize=False
        )
        for r in rows
    ]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    vocab = model.config.vocab_size
    mass = torch.zeros(vocab, dtype=torch.float64)
    positions = 0
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids] * a.samples)
            out = model.generate(
                x,
                do_sample=True,
                temperature=1.0,
                max_new_tokens=a.probe_tokens,
                min_new_tokens=a.probe_tokens,  # eos suppressed: every position is measured
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id,
            )
            # raw logits: min_new_tokens masks eos only in the processed scores
            for logits in out.logits:
                mass += torch.softmax(logits.double(), -1).sum(0)
                positions += logits.shape[0]
    mass /= positions
    eos = tok.eos_token_id
    special = set(tok.all_special_ids)
    order = [i for i in torch.argsort(mass, descending=True).tolist() if i not in special]
    # The likeliest tokens that still fit under the target, until it is nearly reached.
    target = 1.0 / a.target_mean
    chosen, total = [], float(mass[eos])
    for i in order:
        if total + float(mass[i]) > target:
            continue
        chosen.append(i)
        total += float(mass[i])
        if total > 0.97 * target:
            break
    print(f"positions measured: {positions}; uniform would be {1 / vocab:.5f} per token")
    print(f"eos {eos}: {float(mass[eos]):.5f}; largest token mass {float(mass[order[0]]):.5f}")
    print(f"stop ids {sorted(chosen)} ({[tok.decode([i]) for i in sorted(chosen)]})")
    print(f"stop mass with eos {total:.5f} -> geometric mean length {1 / total:.0f}")

    lengths = []
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(
                torch.tensor([ids] * a.samples),
                do_sample=True,
                temperature=1.0,
                max_new_tokens=a.max_tokens,
                eos_token_id=[eos, *chosen],
                pad_token_id=tok.pad_token_id,
            )
            for row in out[:, len(ids) :].tolist():
                stops = [k for k, t in enumerate(row) if t in (eos, *chosen)]
                lengths.append(stops[0] + 1 if stops else len(row))
    lengths.sort()
    n = len(lengths)
    print(
        f"sampled lengths (n={n}): mean {sum(lengths) / n:.0f}, p50 {lengths[n // 2]}, "
        f"p90 {lengths[int(n * 0.9)]}, max {lengths[-1]}, at cap {lengths.count(a.max_tokens)}"
    )


if __name__ == "__main__":
    main()
