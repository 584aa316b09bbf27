"""Configuration of the reward worker pool (the `rewards:` section of a run YAML).

Which reward functions run and their weights are trainer settings (`trainer.reward_funcs`,
`trainer.reward_weights`, TRL's names); this section is about how they are executed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
