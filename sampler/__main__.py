"""`python -m sampler`: serve one sampler replica (vLLM AsyncLLM behind FastAPI/uvicorn).

Owns: command-line parsing, the security checks on bind address and keys, startup logging of the
URL once the engine can serve. Does not know: routes or generation (see `api.py`, `serving.py`).

    python -m sampler --model DIR [--host 127.0.0.1] [--port 8000] [--api-key K] [--admin-key K2]
                      [--tensor-parallel-size N] [--dtype float32] [--config run.yaml]

Keys may also come from SAMPLER_API_KEY / SAMPLER_ADMIN_KEY (keeps them out of `ps`).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from sampler.config import SamplerConfig
from sampler.lifecycle import children_die_with_me
from sampler.netaddr import is_loopback

log = logging.getLogger("sampler")


def load_config(path: str | None) -> SamplerConfig:
    """The `sampler:` section of a run YAML (or a bare sampler mapping); defaults without a file."""
    if path is None:
        return SamplerConfig()
    import yaml

    raw = yaml.safe_load(Path(path).read_text()) or {}
    section = raw.get("sampler", raw) if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise ValueError(f"{path}: expected a mapping with a 'sampler:' section")
    return SamplerConfig.model_validate(section)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, SamplerConfig]:
    p = argparse.ArgumentParser(
        prog="python -m sampler", description="Serve a vLLM sampler replica."
    )
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--config", help="run YAML with a 'sampler:' section (command-line flags win)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; others need --api-key)")
    p.add_argument("--port", type=int, help="port (default 8000; 0: a free one, needs --port-file)")
    p.add_argument(
        "--port-file",
        help="write the port once it is bound (before the engine loads); with --port 0, the way a "
        "launcher learns which free port the server holds",
    )
    p.add_argument("--api-key", help="bearer token for generation routes (or SAMPLER_API_KEY)")
    p.add_argument("--admin-key", help="bearer token for weight updates (or SAMPLER_ADMIN_KEY)")
    p.add_argument(
        "--trainer-key",
        help="bearer token for /generate and /logprobs (or SAMPLER_TRAINER_KEY; default: the api key)",
    )
    p.add_argument("--tensor-parallel-size", type=int)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--kv-cache-memory-bytes", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--served-model-name")
    p.add_argument(
        "--initial-version", type=int, default=0, help="policy version of the loaded weights"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config)
        overrides = {
            "host": a.host,
            "port": a.port,
            "api_key": a.api_key or os.environ.get("SAMPLER_API_KEY"),
            "admin_key": a.admin_key or os.environ.get("SAMPLER_ADMIN_KEY"),
            "trainer_key": a.trainer_key or os.environ.get("SAMPLER_TRAINER_KEY"),
            "tensor_parallel_size": a.tensor_parallel_size,
            "dtype": a.dtype,
            "max_model_len": a.max_model_len,
            "kv_cache_memory_bytes": a.kv_cache_memory_bytes,
            "seed": a.seed,
            "served_model_name": a.served_model_name,
        }
        cfg = SamplerConfig.model_validate(
            {**cfg.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    except Exception as e:  # pydantic / yaml / file errors: one clear line, exit 2
        p.error(str(e))
    if not (Path(a.model) / "config.json").is_file():
        p.error(f"--model {a.model}: not a Hugging Face model folder (no config.json)")
    if not is_loopback(cfg.host) and not cfg.api_key:
        p.error(
            f"--host {cfg.host} is not loopback: refusing to serve without --api-key (or SAMPLER_API_KEY)"
        )
    if a.port is None and cfg.port == 0:
        cfg = cfg.model_copy(update={"port": 8000})
    if cfg.port == 0 and not a.port_file:
        p.error("--port 0 needs --port-file (clients need to know the port): or pick a port")
    return a, cfg


BACKLOG = 2048  # uvicorn's default


def bind_port(host: str, port: int, port_file: str | None) -> socket.socket:
    """The server's socket, bound now: the port is held while the engine loads (for minutes,
    during which vLLM itself opens free ports that could otherwise take it), and a port in use
    is an error before anything slow starts. uvicorn serves on it once the engine is ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart on the same port
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        print(
            f"python -m sampler: error: cannot bind {host}:{port} ({e.strerror}): is another "
            "server on that port? Pick another --port (or 0 with --port-file)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    # Listening makes the hold exclusive: Linux lets two SO_REUSEADDR sockets share a port
    # while neither listens. Connections made before the engine is ready wait in the backlog.
    sock.listen(BACKLOG)
    if port_file:
        tmp = Path(f"{port_file}.tmp")
        tmp.write_text(str(sock.getsockname()[1]))
        tmp.replace(port_file)  # atomically: a launcher never reads half a number
    return sock


def main(argv: list[str] | None = None) -> int:
    a, cfg = parse_args(argv)
    sock = bind_port(cfg.host, cfg.port, a.port_file)
    cfg = cfg.model_copy(update={"port": sock.getsockname()[1]})
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn

    from sampler.api import build_app
    from sampler.engine import build_engine, prepare_engine
    from sampler.serving import SamplerService

    model_name = cfg.served_model_name or Path(a.model).resolve().name
    url = f"http://{cfg.host}:{cfg.port}"

    async def start() -> SamplerService:
        children_die_with_me()  # an engine core outliving a killed server holds its memory
        engine = build_engine(a.model, cfg)
        await prepare_engine(engine, cfg)
        svc = SamplerService(engine, cfg, model_name, initial_version=a.initial_version)
        await svc.check_health()
        # One line a launcher or a person can wait for.
        print(f"sampler ready at {url} (model {model_name}, version {svc.version})", flush=True)
        return svc

    async def stop(svc: SamplerService) -> None:
        svc.engine.shutdown()

    if cfg.admin_key is None:
        log.warning("no --admin-key: weight-update routes are disabled")
    app = build_app(
        start=start,
        stop=stop,
        api_key=cfg.api_key,
        admin_key=cfg.admin_key,
        trainer_key=cfg.trainer_key,
        max_body_bytes=cfg.limits.max_body_bytes,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=a.log_level, access_log=False, backlog=BACKLOG)
    )
    server.run(sockets=[sock])
    return 0 if server.started else 3  # as uvicorn.run: the app's start-up failed


if __name__ == "__main__":
    sys.exit(main())
