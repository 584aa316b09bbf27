"""deploy.layout and the launcher's pure parts: roles, resources, env scrubbing, AML env checks."""

from __future__ import annotations

import sys

import pytest

from deploy.launch import default_driver_command, exit_status, main, parse_args, role_env
from deploy.layout import (
    Layout,
    LayoutError,
    check_config_fits,
    check_world,
    read_node_env,
)
from deploy.raynode import ray_start_command
from trainer.cluster import scrub_torch_env

AML = {"NODE_RANK": "2", "WORLD_SIZE": "3", "MASTER_ADDR": "10.0.0.4", "MASTER_PORT": "6105"}


def test_roles_first_n_nodes_sample_rest_train():
    lay = Layout(sampler_nodes=1, trainer_nodes=2, sampler_gpus_per_node=8, trainer_gpus_per_node=8)
    assert [lay.role(r) for r in range(3)] == ["sampler", "trainer", "trainer"]
    lay2 = Layout(2, 1)
    assert [lay2.role(r) for r in range(3)] == ["sampler", "sampler", "trainer"]
    with pytest.raises(LayoutError, match="outside 0..2"):
        lay.role(3)


def test_resources_one_unit_per_gpu_and_one_on_cpu():
    assert Layout(1, 2, 8, 4).resources("sampler") == {"grpo_sampler": 8.0}
    assert Layout(1, 2, 8, 4).resources("trainer") == {"grpo_trainer": 4.0}
    assert Layout(1, 2).resources("trainer") == {"grpo_trainer": 1.0}


@pytest.mark.parametrize("kw,match", [({"sampler_nodes": 0, "trainer_nodes": 1}, "--sampler-nodes"),
                                      ({"sampler_nodes": 1, "trainer_nodes": 0}, "--trainer-nodes"),
                                      ({"sampler_nodes": 1, "trainer_nodes": 1, "trainer_gpus_per_node": -1},
                                       "--trainer-gpus-per-node")])  # fmt: skip
def test_layout_rejects_empty_roles(kw, match):
    with pytest.raises(LayoutError, match=match):
        Layout(**kw)


def test_scrub_removes_torch_and_mpi_vars_only():
    env = {**AML, "RANK": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "TORCHELASTIC_RUN_ID": "x",
           "OMPI_COMM_WORLD_RANK": "2", "PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1", "NCCL_DEBUG": "WARN",
           "MLFLOW_TRACKING_URI": "azureml://x"}  # fmt: skip
    clean, removed = scrub_torch_env(env)
    assert clean == {
        "PATH": "/bin",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "NCCL_DEBUG": "WARN",
        "MLFLOW_TRACKING_URI": "azureml://x",
    }
    assert removed == sorted(set(env) - set(clean))


def test_role_env_adds_role_and_ray_auth():
    env, removed = role_env(
        {**AML, "RANK": "2"},
        role="trainer",
        node_rank=2,
        num_nodes=3,
        ray_auth="token",
        token="t0k",
    )
    assert "RANK" in removed and "WORLD_SIZE" not in env and "MASTER_ADDR" not in env
    assert (
        env["GRPO_NODE_ROLE"] == "trainer"
        and env["RAY_AUTH_MODE"] == "token"
        and env["RAY_AUTH_TOKEN"] == "t0k"
    )
    env2, _ = role_env(
        {"RAY_AUTH_TOKEN": "old"},
        role="sampler",
        node_rank=0,
        num_nodes=2,
        ray_auth="disabled",
        token=None,
    )
    assert env2["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN" not in env2


def test_read_node_env_ok_and_rank_fallback():
    assert read_node_env(AML).node_rank == 2
    env = {**AML, "RANK": "1"}
    del env["NODE_RANK"]
    assert read_node_env(env).node_rank == 1


@pytest.mark.parametrize("change,match", [
    ({"MASTER_ADDR": None}, "MASTER_ADDR is not set"),
    ({"WORLD_SIZE": None}, "WORLD_SIZE is not set"),
    ({"NODE_RANK": None}, r"NODE_RANK \(or RANK\) is not set"),
    ({"NODE_RANK": "x"}, "NODE_RANK='x' is not an integer"),
    ({"NODE_RANK": "3"}, "outside 0..WORLD_SIZE-1"),
    ({"MASTER_PORT": "70000"}, "not a TCP port"),
])  # fmt: skip
def test_read_node_env_errors_name_the_variable(change, match):
    env = {k: v for k, v in {**AML, **change}.items() if v is not None}
    with pytest.raises(LayoutError, match=match):
        read_node_env(env)


def test_world_size_must_match_layout():
    with pytest.raises(LayoutError, match="WORLD_SIZE=3 but the layout asks for 4 nodes"):
        check_world(read_node_env(AML), Layout(2, 2))
    check_world(read_node_env(AML), Layout(1, 2))


def test_config_must_fit_the_gpus():
    lay = Layout(1, 2, 8, 8)
    assert check_config_fits(lay, sampler_replicas=8, sampler_tensor_parallel=1, trainer_workers=16,
                             trainer_gpus_per_worker=1) == []  # fmt: skip
    with pytest.raises(
        LayoutError, match="sampler.replicas x sampler.tensor_parallel_size = 16 GPUs"
    ):
        check_config_fits(
            lay,
            sampler_replicas=4,
            sampler_tensor_parallel=4,
            trainer_workers=1,
            trainer_gpus_per_worker=1,
        )
    with pytest.raises(LayoutError, match="exceeds --sampler-gpus-per-node=8"):
        check_config_fits(
            lay,
            sampler_replicas=1,
            sampler_tensor_parallel=16,
            trainer_workers=1,
            trainer_gpus_per_worker=1,
        )
    with pytest.raises(LayoutError, match="= 17 GPUs but the trainer nodes have 16"):
        check_config_fits(
            lay,
            sampler_replicas=1,
            sampler_tensor_parallel=1,
            trainer_workers=17,
            trainer_gpus_per_worker=1,
        )
    with pytest.raises(LayoutError, match="trainer_gpus_per_worker is 0"):
        check_config_fits(
            lay,
            sampler_replicas=1,
            sampler_tensor_parallel=1,
            trainer_workers=1,
            trainer_gpus_per_worker=0,
        )
    warn = check_config_fits(
        lay,
        sampler_replicas=2,
        sampler_tensor_parallel=2,
        trainer_workers=8,
        trainer_gpus_per_worker=1,
    )
    assert any("uses 4 of 8 sampler GPUs" in w for w in warn) and any(
        "uses 8 of 16 trainer GPUs" in w for w in warn
    )


def test_ray_start_commands():
    head = ray_start_command(
        head=True, port=6379, node_ip="10.0.0.4", num_gpus=8, resources={"grpo_sampler": 8.0}
    )
    assert head[:4] == ["ray", "start", "--block", "--disable-usage-stats"]
    assert "--head" in head and head[head.index("--port") + 1] == "6379"
    assert head[head.index("--resources") + 1] == '{"grpo_sampler": 8.0}'
    worker = ray_start_command(head=False, port=6379, head_address="10.0.0.4:6379", temp_dir="/tmp/r1",
                               resources={"grpo_trainer": 1.0})  # fmt: skip
    assert "--head" not in worker and worker[worker.index("--address") + 1] == "10.0.0.4:6379"
    assert worker[worker.index("--temp-dir") + 1] == "/tmp/r1" and "--num-gpus" not in worker
    with pytest.raises(ValueError, match="head_address"):
        ray_start_command(head=False, port=6379)


def test_default_driver_command_follows_the_driver_contract():
    args, driver = parse_args(["--config", "c.yaml", "--sampler-nodes", "1", "--output-dir", "/out",
                               "--set", "trainer.max_steps=3", "--resume"])  # fmt: skip
    assert driver == []
    cmd = default_driver_command(args, "10.0.0.4:6379")
    assert cmd[:5] == [sys.executable, "-m", "trainer", "--config", "c.yaml"]
    assert cmd[5:] == ["--set", "pipeline.ray_address=10.0.0.4:6379", "--set", "trainer.output_dir=/out",
                       "--set", "trainer.max_steps=3", "--resume"]  # fmt: skip
    _, driver = parse_args(["--sampler-nodes", "1", "--", "python", "-c", "pass"])
    assert driver == ["python", "-c", "pass"]
    # without --resume, a retried job (same checkpoint folder) continues where it stopped
    args, _ = parse_args(["--config", "c.yaml", "--sampler-nodes", "1"])
    assert default_driver_command(args, "10.0.0.4:6379")[-1] == "--auto-resume"


def test_exit_status_maps_signals():
    assert exit_status(0) == 0 and exit_status(3) == 3 and exit_status(-9) == 137


@pytest.mark.parametrize("env,argv,match", [
    ({**AML, "WORLD_SIZE": "4", "NODE_RANK": "0"}, ["--sampler-nodes", "1", "--trainer-nodes", "2"], "WORLD_SIZE=4"),
    ({k: v for k, v in AML.items() if k != "MASTER_ADDR"}, ["--sampler-nodes", "1"], "MASTER_ADDR is not set"),
    (AML, ["--sampler-nodes", "1"], "no token was given"),
    (AML, ["--sampler-nodes", "1", "--ray-auth", "disabled"], "no driver command"),
    (AML, ["--sampler-nodes", "1", "--ray-auth", "disabled", "--set", "oops", "--", "true"], "expected dotted.key=value"),
])  # fmt: skip
def test_launcher_refuses_an_inconsistent_environment(env, argv, match, capsys):
    assert main(argv, environ=env) == 2
    assert match in capsys.readouterr().err


def test_launcher_checks_the_config_against_the_nodes(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "sampler: {replicas: 16}\npipeline: {num_trainer_workers: 8, trainer_gpus_per_worker: 1}\n"
    )
    argv = ["--config", str(cfg), "--sampler-nodes", "1", "--sampler-gpus-per-node", "8",
            "--trainer-gpus-per-node", "8", "--ray-auth", "disabled"]  # fmt: skip
    assert main(argv, environ=AML) == 2
    assert "sampler.replicas x sampler.tensor_parallel_size = 16 GPUs" in capsys.readouterr().err
