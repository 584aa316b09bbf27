"""Configuration of the reward worker pool (the `rewards:` section of a run YAML).

Which reward functions run and their weights are trainer settings (`trainer.reward_funcs`,
`trainer.reward_weights`, TRL's names); this section is about how they are executed, plus the
options of built-in rewards (answer set of `accuracy`, buffer of `overlong`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RewardPoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    use_ray: bool = Field(
        True, description="Score on a Ray actor pool; false scores in-process (no isolation)."
    )
    num_workers: int = Field(2, ge=1, description="Reward actors.")
    num_cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs reserved per actor.")
    timeout_s: float = Field(
        30.0, gt=0, description="Per-batch timeout; a batch past it scores None for its items."
    )
    max_retries: int = Field(
        1, ge=0, description="Retries of a failed batch (after restarting a dead actor)."
    )
    max_batch_size: int = Field(
        256, ge=1, description="Items per actor call (per-item calls cost ~0.5 ms each)."
    )
    ray_address: str | None = Field(
        None,
        description="Existing Ray cluster to join ('auto' or host:port); null: the driver's Ray.",
    )
    min_batch_size: int = Field(
        16,
        ge=1,
        description="A request is split across idle actors only into pieces of at least this many items "
        "(smaller pieces cost more in call overhead than they gain in parallelism).",
    )
    actor_start_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Seconds a new or replacement reward actor may take to start and import rewards.",
    )
    runtime_env: dict[str, Any] | None = Field(
        None,
        description="Ray runtime_env for the reward actors (e.g. {'env_vars': {'PYTHONPATH': ...}} or "
        "{'py_modules': [...]}) so plugin reward modules import on every node. OMP_NUM_THREADS=1 is added.",
    )
    inline_builtins: bool = Field(
        True,
        description="Score the built-in rewards (pure, linear-time, property-tested never to raise) in the "
        "driver and send only plugin rewards to the actors: for regex rewards, shipping items to an actor "
        "costs more than scoring them (docs/benchmarks.md, section 3). False: every reward runs on the actors.",
    )
    answer_choices: list[str] | None = Field(
        None, description="Options the `accuracy` reward accepts (default ['A','B','C','D'])."
    )
    overlong_buffer_tokens: int | None = Field(
        None,
        ge=1,
        description="DAPO L_cache of the `overlong` reward: the penalty ramps from 0 to -1 over the last "
        "this many tokens before max_completion_length (default max_completion_length // 4).",
    )

    @field_validator("answer_choices")
    @classmethod
    def _choices(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v) or any(not c.strip() for c in v)):
            raise ValueError(
                "rewards.answer_choices must be a non-empty list of distinct options, e.g. [A, B, C, D, E]"
            )
        return v
