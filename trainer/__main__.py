"""`python -m trainer --config CONFIG [--resume] [--set key=value ...] [--serve]`: run the GRPO
pipeline."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer", description="Run the disaggregated GRPO pipeline."
    )
    p.add_argument("--config", required=True, help="run YAML (see configs/)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in trainer.output_dir",
    )
    g.add_argument(
        "--auto-resume",
        action="store_true",
        help="resume if trainer.output_dir holds a checkpoint, else start fresh (job retries)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="after training, keep the sampler replicas serving the final policy (OpenAI API) "
        "until Ctrl-C; exit code 0",
    )
    a = p.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOGLEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "mlflow", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from data.loader import DataError
    from trainer.config import ConfigError
    from trainer.config_loading import load_config, parse_overrides
    from trainer.precheck import check_inputs
    from trainer.weight_probe import WeightProbeError

    try:  # config, model folder and data first: they fail in a second, before anything starts
        cfg = load_config(a.config, parse_overrides(a.set))
        check_inputs(cfg)
        from trainer.entry import run

        rc = run(cfg, resume="auto" if a.auto_resume else a.resume, serve=a.serve)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"error: data: {e}", file=sys.stderr)
        return 2
    except WeightProbeError as e:  # raised in a Ray actor: print its own message, not Ray's
        print(f"error: {getattr(e, 'cause', None) or e}", file=sys.stderr)
        return 1
    if rc > 128:
        print(f"interrupted (signal {rc - 128}): all roles were shut down", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
