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
        # The first stop signal, and whether the run had finished when it came.
        stops: list[tuple[signal.Signals, bool]] = []
        handled: list[signal.Signals] = []

        def arrived(signum: int, _frame: object) -> None:
            # Python-level, so it runs when the signal comes, also while the loop's thread is
            # busy in synchronous code (the final model's MLflow logging), where asyncio's
            # handler below waits: the run stops at its next stop point (Run.stop_point).
            if not stops:
                stops.append((signal.Signals(signum), r.finished))
                r.stop_requested = True

        def on_signal(sig: signal.Signals) -> None:  # asyncio's, once the loop's thread is free
            if handled:  # a second Ctrl-C must not abort the teardown half-way
                log.warning("%s again: still shutting down every role, please wait", sig.name)
                return
            handled.append(sig)
            arrived(sig, None)  # when a library replaced `arrived` (Ray does for SIGTERM)
            log.warning("%s: stopping the run and shutting every role down", sig.name)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
            # Replaces only the Python-level handler: asyncio still learns of the signal
            # through its wake-up fd and runs on_signal.
            signal.signal(sig, arrived)
        try:
            rc = await r.run_async()
            if serve:
                await r.serve()
            return rc
        except asyncio.CancelledError:
            if stops and stops[0][1]:  # Ctrl-C while serving a finished run
                return 0
            if stops:
                log.warning("%s", r.resume_hint())
                return 128 + stops[0][0]
            raise
        finally:
            # To its end even when a stop signal's cancel lands in it (one that came while the
            # run's last synchronous steps kept the loop busy): an aborted teardown leaves
            # processes behind and ends in a traceback.
            teardown = asyncio.ensure_future(r.shutdown())
            while True:
                try:
                    await asyncio.shield(teardown)
                    break
                except asyncio.CancelledError:
                    if teardown.cancelled():
                        raise

    return asyncio.run(main())
