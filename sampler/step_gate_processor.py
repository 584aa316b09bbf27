"""Test-only: the engine's side of the step gate (see `sampler/step_gate.py`), as a vLLM logits
processor. Loaded by vLLM in its workers, only when GRPO_TEST_STEP_GATE is set.

Owns: `StepGate`. Does not know: the test, the sampler service.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from vllm.v1.sample.logits_processor import LogitsProcessor

from sampler.step_gate import MAX_WAIT_S, STEP_GATE_ENV, read_int, write_int

_POLL_S = 0.001  # per wait of a step: the engine's side polls faster than the test's


class StepGate(LogitsProcessor):
    """Waits for the test's permission before each sampling step; returns the logits unchanged
    (greedy tokens and the raw logprobs vLLM reports are those of the model)."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        self.dir = Path(os.environ[STEP_GATE_ENV])
        self.steps = 0
        self.rank: int | None = None  # known once the worker's process groups exist

    def is_argmax_invariant(self) -> bool:
        return False  # vLLM skips argmax-invariant processors for greedy batches

    def update_state(self, batch_update: Any) -> None:
        return None

    def apply(self, logits: Any) -> Any:
        if self.rank is None:
            from vllm.distributed import get_tensor_model_parallel_rank

            self.rank = get_tensor_model_parallel_rank()
        if self.rank != 0:
            return logits
        deadline = time.monotonic() + MAX_WAIT_S
        while time.monotonic() < deadline:
            allowed = read_int(self.dir / "allowed")
            if allowed is None or self.steps < allowed:
                break
            time.sleep(_POLL_S)
        self.steps += 1
        write_int(self.dir / "done", self.steps)
        return logits
