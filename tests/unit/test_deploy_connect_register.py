"""deploy/connect.py (tunnel to the live sampler) and deploy/register.py (--dry-run specs)."""

from __future__ import annotations

import pytest
import yaml

from deploy import connect, register


def test_sampler_urls_as_json_or_csv():
    assert (
        connect.parse_sampler_urls('["http://10.0.0.4:8000", "http://10.0.0.4:8001"]')[1]
        == "http://10.0.0.4:8001"
    )
    assert connect.parse_sampler_urls("http://10.0.0.4:8000,http://10.0.0.5:8000") == [
        "http://10.0.0.4:8000",
        "http://10.0.0.5:8000",
    ]
    with pytest.raises(connect.ConnectError, match="not http"):
        connect.parse_sampler_urls("10.0.0.4")
    with pytest.raises(connect.ConnectError, match="empty"):
        connect.parse_sampler_urls("")


def test_tunnel_command():
    host, port = connect.parse_ssh_endpoint("ssh://20.1.2.3:50000")
    assert (host, port) == ("20.1.2.3", 50000)
    assert connect.parse_ssh_endpoint("20.1.2.3:50001") == ("20.1.2.3", 50001)
    cmd = connect.tunnel_command("http://10.0.0.4:8000", host, port, 9000, private_key="~/.ssh/id")
    assert cmd[:4] == ["ssh", "-N", "-L", "9000:10.0.0.4:8000"]
    assert cmd[cmd.index("-p") + 1] == "50000" and cmd[-1] == "root@20.1.2.3" and "-i" in cmd


def test_connect_prints_the_tunnel(capsys):
    rc = connect.main(
        ["--job", "j", "--sampler-url", "http://10.0.0.4:8000", "--ssh-endpoint", "1.2.3.4:5"]
    )
    out = capsys.readouterr().out
    assert (
        rc == 0 and "ssh -N -L 8000:10.0.0.4:8000 -p 5" in out and "http://127.0.0.1:8000/v1" in out
    )


def test_register_dry_run_prints_model_endpoint_deployment(capsys):
    assert register.main(["--job", "grpo-1", "--endpoint", "grpo-ep", "--dry-run"]) == 0
    model, endpoint, deployment = yaml.safe_load_all(capsys.readouterr().out)
    assert (
        model["type"] == "mlflow_model" and model["path"] == "azureml://jobs/grpo-1/outputs/model"
    )
    assert endpoint["name"] == "grpo-ep" and endpoint["auth_mode"] == "key"
    assert deployment["endpoint_name"] == "grpo-ep" and deployment["instance_count"] == 1
    assert deployment["model"]["type"] == "mlflow_model"


def test_register_rejects_a_bad_endpoint_name(capsys):
    assert register.main(["--job", "j", "--endpoint", "bad_name!", "--dry-run"]) == 2
    assert "--endpoint 'bad_name!'" in capsys.readouterr().err
