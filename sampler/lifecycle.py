"""A replica's processes live and die together: the HTTP server dies with its launcher (a Ray
actor), and vLLM's engine core (with, under tensor parallelism, its workers) dies with the server.

Owns: the parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`) and where it is set. Does not
know: vLLM's internals beyond how it creates processes: by fork (GPU), where an at-fork hook of
the server sets the signal, or by spawn (vLLM's CPU platform forces it), where nothing of the
server runs in the child and vLLM's general-plugin hook (`vllm.general_plugins` entry point in
pyproject.toml, called by every engine core and worker at start) sets it.

Why: a server that dies abruptly (SIGKILL, the OOM killer, its actor gone) runs no cleanup, and
vLLM's engine core then lives on as an orphan holding the model, its KV cache and on a GPU its
memory, so the replica's restart fails for lack of it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
# Set in the server's environment, inherited by its children: a spawned one sets its signal.
_ENV = "GRPO_SAMPLER_CHILDREN_DIE_WITH_PARENT"


def set_parent_death_signal(sig: int) -> None:
    """This process gets `sig` when the thread that created it exits (Linux only; elsewhere a
    no-op: the processes are then only cleaned up by their group's signal)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def die_with_launcher() -> None:
    """preexec_fn of the server: SIGTERM (a clean vLLM shutdown) when its launcher dies."""
    set_parent_death_signal(signal.SIGTERM)


def children_die_with_me() -> None:
    """In the server, before the engine starts: every child process it (or its children) creates
    gets SIGKILL when its parent dies. vLLM creates them from the main thread, which lives as
    long as the process."""
    os.environ[_ENV] = "1"
    os.register_at_fork(after_in_child=lambda: set_parent_death_signal(signal.SIGKILL))


def vllm_plugin() -> None:
    """vLLM general plugin, run at the start of every engine core and worker process: one
    started (by spawn) for our server gets SIGKILL when its parent dies. A no-op in any other
    process that runs vLLM (no marker in its environment)."""
    if os.environ.get(_ENV) and multiprocessing.parent_process() is not None:
        set_parent_death_signal(signal.SIGKILL)
