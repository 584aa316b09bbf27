"""The pipeline as a process: `run(cfg)` runs the driver's loop under asyncio, turns SIGINT and
SIGTERM into a clean stop, and serves the final policy on request (`--serve`).

Owns: signal handling (a second Ctrl-C does not abort the teardown), the exit code (0, or
128 + signal for an interrupted run, with what `--resume` would redo), the serving phase.
Does not know: what the run does (trainer.driver).
"""

from __future__ import annotations

import asyncio
import logging

from trainer.config import RunConfig
from trainer.driver import Run

log = logging.getLogger("trainer")


def run(cfg: RunConfig, resume: bool | str = False, serve: bool = False) -> int:
    """Run the pipeline; on SIGINT/SIGTERM stop, shut every role down, and return 128 + signal.
    `serve`: after training, keep the replicas serving the final policy until a signal (then 0)."""
    import signal

    r = Run(cfg, resume)

    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        stopped: list[signal.Signals] = []

        def on_signal(sig: signal.Signals) -> None:
            if stopped:  # a second Ctrl-C must not abort the teardown half-way
                log.warning("%s again: still shutting down every role, please wait", sig.name)
                return
            stopped.append(sig)
            log.warning("%s: stopping the run and shutting every role down", sig.name)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            rc = await r.run_async()
            if serve:
                await r.serve()
            return rc
        except asyncio.CancelledError:
            if stopped and r.finished:  # Ctrl-C while serving a finished run
                return 0
            if stopped:
                log.warning("%s", r.resume_hint())
                return 128 + stopped[0]
            raise
        finally:
            await r.shutdown()

    return asyncio.run(main())
