"""A local one-machine Ray whose servers listen on loopback only.

Owns: `init_loopback_ray`. Does not know: what runs on Ray (the reward pool, the trainer's roles).
"""

from __future__ import annotations

from typing import Any

# Ray turns a 127.0.0.1 node address into the machine's routable one unless cluster mode is off,
# and with a routable node address its GCS, raylets, workers and agents listen on every
# interface (unauthenticated when RAY_AUTH_MODE is disabled: anyone who reaches them runs code).
# With cluster mode off (the env var's name is Ray's: Windows/macOS default) and the node at
# 127.0.0.1, every Ray server listens on loopback only. Read by Ray at import: set before it.
_RAY_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_loopback_ray(**kwargs: Any) -> None:
    """Start a local one-machine Ray whose every server listens on 127.0.0.1 only.

    The single-node switch is set only while Ray starts (its daemons inherit it) and restored
    afterwards: a process that later launches a multi-node `ray start` (a test, a launcher)
    must not inherit it."""
    import os

    import ray
    from ray._private import ray_constants

    before_env, before_const = (
        os.environ.get(_RAY_SINGLE_NODE_ENV),
        ray_constants.ENABLE_RAY_CLUSTER,
    )
    os.environ[_RAY_SINGLE_NODE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: set the live value too
    try:
        ray.init(_node_ip_address="127.0.0.1", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_const
        if before_env is None:
            os.environ.pop(_RAY_SINGLE_NODE_ENV, None)
        else:
            os.environ[_RAY_SINGLE_NODE_ENV] = before_env
