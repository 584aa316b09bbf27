"""environment/requirements-gpu.txt agrees with pyproject.toml (the `gpu` extra and core pins)."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml with tomllib")

REPO = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, Requirement]:
    pins = {}
    for line in (REPO / "environment" / "requirements-gpu.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = req
    return pins


def _pyproject() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = [Requirement(r) for r in meta["dependencies"]]
    extras = {k: [Requirement(r) for r in v] for k, v in meta["optional-dependencies"].items()}
    return core, extras


def _pinned_version(req: Requirement) -> str:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{req}: pin exactly (name==version)"
    return specs[0].version


def test_every_gpu_pin_is_exact():
    for req in _pins().values():
        _pinned_version(req)


def test_gpu_extra_is_pinned_consistently():
    pins = _pins()
    _, extras = _pyproject()
    for req in extras["gpu"]:
        name = canonicalize_name(req.name)
        assert name in pins, (
            f"pyproject gpu extra needs {req}; add it to environment/requirements-gpu.txt"
        )
        assert req.specifier.contains(_pinned_version(pins[name]), prereleases=True), (
            f"requirements-gpu.txt pins {pins[name]} but pyproject's gpu extra says {req}"
        )


def test_core_and_azure_pins_satisfy_pyproject():
    pins = _pins()
    core, extras = _pyproject()
    checked = 0
    for req in core + extras["azure"]:
        name = canonicalize_name(req.name)
        if name in pins:
            checked += 1
            assert req.specifier.contains(_pinned_version(pins[name]), prereleases=True), (
                f"requirements-gpu.txt pins {pins[name]} but pyproject says {req}"
            )
            assert set(pins[name].extras) >= set(req.extras), (
                f"{pins[name]} lacks extras {req.extras}"
            )
    assert (
        checked >= 10
    )  # the training stack (trl, deepspeed, ray, mlflow, ...) is actually compared


def test_the_job_image_has_the_services_it_needs():
    docker = (REPO / "environment" / "Dockerfile").read_text()
    assert "openssh-server" in docker  # AML's SSH job service
    assert "requirements-gpu.txt" in docker
    for pkg in ("vllm", "trl", "deepspeed", "ray", "mlflow", "azureml-mlflow"):
        assert canonicalize_name(pkg) in _pins(), pkg


def test_the_base_image_is_pinned():
    """`:latest` (or no tag) would change the image under a job without anyone deciding it."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "environment" / "Dockerfile").read_text()
    [image] = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.M)
    tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
    assert tag and tag != "latest", image
