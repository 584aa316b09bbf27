"""Per-node launcher, the command of the Azure ML job: `python -m deploy.launch --sampler-nodes N ...`.

Owns: turning AML's per-node variables (NODE_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) into a
role (first N nodes sampler, the rest trainer), starting this node's Ray (head on node 0, worker
elsewhere, each advertising its role's custom resource), running the driver on node 0, keeping the
other nodes alive until it ends, and making every node exit with the driver's status.
Exit codes: the driver's (a signal death becomes 128+signal); 2 for a bad environment or config
(nothing started); 3 when the cluster could not form or lost a node. When it ends, however it ends
(SIGKILL included), nothing it started is left running (`deploy.reaper`).
Does not know: what the driver does (any command after `--`; default `python -m trainer`), Azure.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from deploy.launch_args import parse_args
from deploy.layout import (
    Layout,
    LayoutError,
    NodeEnv,
    check_set_override,
    check_world,
    read_node_env,
)
from deploy.raynode import RayNode, ray_executable, ray_start_command
from deploy.reaper import MARK, Reaper, new_mark
from deploy.rendezvous import HeadRendezvous, RendezvousError, WorkerRendezvous
from trainer.cluster import scrub_torch_env

log = logging.getLogger("deploy.launch")

EXIT_USAGE = 2
EXIT_CLUSTER = 3


class _Terminated(Exception):
    """This launcher got SIGTERM/SIGINT (AML cancels a job with SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def default_driver_command(args: argparse.Namespace, ray_address: str) -> list[str]:
    """`python -m trainer --config C --set pipeline.ray_address=HEAD ...` (the pipeline driver's contract)."""
    if not args.config:
        raise LayoutError(
            "no driver command: pass --config CONFIG (default driver) or a command after `--`"
        )
    # The explicit head address, not `auto`: `auto` may find another Ray on a shared machine.
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "--config",
        args.config,
        "--set",
        f"pipeline.ray_address={ray_address}",
    ]
    if args.output_dir:
        cmd += ["--set", f"trainer.output_dir={args.output_dir}"]
    for item in args.set:
        cmd += ["--set", check_set_override(item)]
    # A job AML retries by itself reruns this command: --auto-resume continues from the job's own
    # checkpoints when there are any, and starts fresh otherwise.
    cmd.append("--resume" if args.resume else "--auto-resume")
    return cmd


def role_env(
    env: Mapping[str, str],
    *,
    role: str,
    node_rank: int,
    num_nodes: int,
    ray_auth: str,
    token: str | None,
) -> tuple[dict[str, str], list[str]]:
    """The environment of Ray and the driver: torch variables scrubbed, role and Ray auth added."""
    clean, removed = scrub_torch_env(env)
    clean.update(
        GRPO_NODE_ROLE=role,
        GRPO_NODE_INDEX=str(node_rank),
        GRPO_NUM_NODES=str(num_nodes),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE=ray_auth,
    )
    if ray_auth == "token":
        assert token
        clean["RAY_AUTH_TOKEN"] = token
    else:
        clean.pop("RAY_AUTH_TOKEN", None)
    return clean, removed


def read_token(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    if args.ray_auth == "disabled":
        return None
    if args.ray_auth_token_file:
        path = Path(args.ray_auth_token_file)
        if not path.is_file():
            raise LayoutError(f"--ray-auth-token-file {path}: no such file")
        token = path.read_text(encoding="utf-8").strip()
    else:
        token = env.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        raise LayoutError(
            "Ray token auth is on but no token was given: pass --ray-auth-token-file (deploy/submit.py does) or set "
            "RAY_AUTH_TOKEN (the same on every node); --ray-auth disabled only on a trusted private network"
        )
    return token


def validate_config(path: str, layout: Layout) -> None:
    """Load the run YAML and check it fits the nodes (errors name the key and the fix)."""
    from deploy.layout import check_run_config
    from trainer.config import ConfigError
    from trainer.config_loading import load_config

    try:
        cfg = load_config(path)
    except ConfigError as e:
        raise LayoutError(str(e)) from None
    for w in check_run_config(layout, cfg):
        log.warning("layout: %s", w)


def exit_status(returncode: int) -> int:
    """A process's status as a shell reports it: a death by signal N is 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def _terminate(proc: subprocess.Popen, grace: float) -> int:
    """SIGTERM the driver's process group, SIGKILL after `grace` seconds; returns its exit status."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return exit_status(proc.wait())


def export_model(model_output: str | None, output_dir: str | None) -> None:
    """If the driver left --model-output empty, copy the newest MLflow model found under --output-dir."""
    if not model_output or not output_dir:
        return
    dest = Path(model_output)
    if (dest / "MLmodel").is_file() or not Path(output_dir).is_dir():
        return
    found = sorted(Path(output_dir).rglob("MLmodel"), key=lambda p: p.stat().st_mtime)
    if not found:
        log.warning(
            "no MLflow model (MLmodel file) under %s: the model output stays empty", output_dir
        )
        return
    src = found[-1].parent
    log.info("exporting MLflow model %s -> %s", src, dest)
    shutil.copytree(src, dest, dirs_exist_ok=True)


def _bind_host(addr: str) -> str:
    """Listen on MASTER_ADDR when it is one of this node's addresses, else on all interfaces."""
    import socket

    try:
        with socket.create_server((addr, 0)):
            return addr
    except OSError:
        log.warning(
            "MASTER_ADDR %s is not an address of this node; the rendezvous listens on all interfaces",
            addr,
        )
        return "0.0.0.0"


def run_head(args, driver_cmd, layout: Layout, node: NodeEnv, env: dict[str, str]) -> int:
    advertise = args.node_ip or node.master_addr
    ray_address = f"{advertise}:{args.ray_port}"
    ray = RayNode(
        ray_start_command(
            head=True,
            port=args.ray_port,
            node_ip=args.node_ip or node.master_addr,
            num_cpus=args.num_cpus,
            num_gpus=layout.gpus("sampler") or None,
            resources=layout.resources("sampler"),
            temp_dir=args.ray_temp_dir,
            object_store_memory=args.object_store_memory,
            dashboard_agent_listen_port=args.dashboard_agent_port,
            ray_bin=ray_executable(),
        ),
        env,
        "ray node 0",
    )
    rdzv: HeadRendezvous | None = None
    driver: subprocess.Popen | None = None
    code = EXIT_CLUSTER
    try:
        ray.wait_ready(args.ray_start_timeout)
        rdzv = HeadRendezvous(
            _bind_host(node.master_addr),
            node.master_port,
            set(range(1, node.world_size)),
            ray_address,
            secret=env.get("RAY_AUTH_TOKEN"),
        )
        rdzv.wait_joined(args.join_timeout, alive=ray.dead)
        cmd = driver_cmd or default_driver_command(args, ray_address)
        denv = {**env, "RAY_ADDRESS": ray_address}
        if args.model_output:
            denv["GRPO_MODEL_OUTPUT_DIR"] = args.model_output
        log.info("all %d nodes joined; driver: %s", node.world_size, shlex.join(cmd))
        driver = subprocess.Popen(cmd, env=denv, start_new_session=True)
        while driver.poll() is None:
            problem = rdzv.failure() or ray.dead()
            if problem:
                log.error("stopping the driver: %s", problem)
                code = _terminate(driver, args.driver_grace) or EXIT_CLUSTER
                break
            time.sleep(0.2)
        else:
            code = exit_status(driver.returncode)
            log.info("driver exited with status %d", code)
            if code == 0:
                export_model(args.model_output, args.output_dir)
    except RendezvousError as e:
        log.error("cluster: %s", e)
        code = EXIT_CLUSTER
    except RuntimeError as e:  # ray start failed
        log.error("%s", e)
        code = EXIT_CLUSTER
    except _Terminated as t:
        code = 128 + t.signum
        log.error("launcher terminated by signal %d", t.signum)
    finally:
        if driver is not None and driver.poll() is None:
            _terminate(driver, args.driver_grace)
        if rdzv is not None:
            rdzv.finish(code)
        ray.stop()
    return code


def run_worker(args, layout: Layout, node: NodeEnv, role: str, env: dict[str, str]) -> int:
    try:
        rdzv = WorkerRendezvous.connect(
            node.master_addr, node.master_port, args.join_timeout, secret=env.get("RAY_AUTH_TOKEN")
        )
    except RendezvousError as e:
        log.error("cluster: %s", e)
        return EXIT_CLUSTER
    ray: RayNode | None = None
    try:
        ray = RayNode(
            ray_start_command(
                head=False,
                port=args.ray_port,
                head_address=rdzv.ray_address,
                node_ip=args.node_ip,
                num_cpus=args.num_cpus,
                num_gpus=layout.gpus(role) or None,  # type: ignore[arg-type]
                resources=layout.resources(role),  # type: ignore[arg-type]
                temp_dir=args.ray_temp_dir,
                object_store_memory=args.object_store_memory,
                dashboard_agent_listen_port=args.dashboard_agent_port,
                ray_bin=ray_executable(),
            ),
            env,
            f"ray node {node.node_rank}",
        )
        try:
            ray.wait_ready(args.ray_start_timeout)
        except RuntimeError as e:
            rdzv.report(node.node_rank, role, ok=False, message=str(e)[-2000:])
            log.error("%s", e)
            return EXIT_CLUSTER
        rdzv.report(node.node_rank, role, ok=True)
        code = rdzv.wait_exit(args.heartbeat_timeout, check=ray.dead)
        log.info("node 0 reports driver status %d", code)
        return code
    except RendezvousError as e:
        log.error("cluster: %s", e)
        return EXIT_CLUSTER
    except _Terminated as t:
        log.error("launcher terminated by signal %d", t.signum)
        return 128 + t.signum
    finally:
        rdzv.close()
        if ray is not None:
            ray.stop()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("LOGLEVEL", "INFO"),
        format="%(asctime)s launch %(levelname)s %(message)s",
        force=True,
    )
    args, driver_cmd = parse_args(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ if environ is None else environ)
    try:
        node = read_node_env(environ)
        trainer_nodes = (
            args.trainer_nodes
            if args.trainer_nodes is not None
            else node.world_size - args.sampler_nodes
        )
        layout = Layout(
            args.sampler_nodes,
            trainer_nodes,
            args.sampler_gpus_per_node,
            args.trainer_gpus_per_node,
        )
        check_world(node, layout)
        role = layout.role(node.node_rank)
        token = read_token(args, environ)
        for item in args.set:
            check_set_override(item)
        if args.config:
            validate_config(args.config, layout)
        elif not driver_cmd:
            raise LayoutError(
                "no driver command: pass --config CONFIG (default driver) or a command after `--`"
            )
    except LayoutError as e:
        print(f"deploy.launch: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    env, removed = role_env(
        environ,
        role=role,
        node_rank=node.node_rank,
        num_nodes=layout.num_nodes,
        ray_auth=args.ray_auth,
        token=token,
    )
    log.info(
        "node %d/%d: role %s, resources %s; scrubbed from role processes: %s",
        node.node_rank,
        node.world_size,
        role,
        layout.resources(role),
        ", ".join(removed) or "nothing",
    )

    def _on_signal(signum, _frame):
        # Once: the cleanup that follows (stop the driver, tell the workers, stop Ray) must not be cut short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise _Terminated(signum)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    # Everything this node starts carries the mark; the reaper kills what is left of it when this
    # launcher ends, however it ends (a SIGKILLed launcher runs no `finally`).
    env[MARK] = new_mark()
    reaper = Reaper(env[MARK], environ)
    try:
        if node.node_rank == 0:
            return run_head(args, driver_cmd, layout, node, env)
        return run_worker(args, layout, node, role, env)
    finally:
        reaper.close()


if __name__ == "__main__":
    sys.exit(main())
