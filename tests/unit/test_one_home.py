"""One home for each shared constant: the names and literals that drifted when copied (the torch
variables a role must not inherit, the Ray resource names, the CPU vLLM environment, the free
port helper) are defined in exactly one module of the packages, read with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("sampler", "trainer", "rewards", "data", "deploy", "bench")

HOMES = {
    "TORCH_ENV_VARS": "trainer/cluster.py",
    "SAMPLER_RESOURCE": "trainer/cluster.py",
    "TRAINER_RESOURCE": "trainer/cluster.py",
    "scrub_torch_env": "trainer/cluster.py",
    "CPU_VLLM_ENV": "sampler/engine.py",
    "free_port": "sampler/netaddr.py",
    "MODEL_PRESETS": "bench/presets.py",
}
LITERALS = {
    "grpo_sampler": "trainer/cluster.py",
    "grpo_trainer": "trainer/cluster.py",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "sampler/engine.py",
    "TORCH_COMPILE_DISABLE": "sampler/engine.py",
}


def _sources() -> dict[str, ast.Module]:
    return {
        str(p.relative_to(REPO)): ast.parse(p.read_text(encoding="utf-8"))
        for pkg in PACKAGES
        for p in sorted((REPO / pkg).rglob("*.py"))
    }


def _defined(tree: ast.Module) -> set[str]:
    """Top-level names a module defines (assignments, functions, classes)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _literals(tree: ast.Module) -> set[str]:
    """String constants in code, docstrings left out (they may name a setting)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


@pytest.mark.parametrize("name", sorted(HOMES))
def test_a_shared_name_is_defined_in_one_module(name: str) -> None:
    where = sorted(path for path, tree in _sources().items() if name in _defined(tree))
    assert where == [HOMES[name]]


@pytest.mark.parametrize("literal", sorted(LITERALS))
def test_a_shared_literal_is_written_in_one_module(literal: str) -> None:
    where = sorted(path for path, tree in _sources().items() if literal in _literals(tree))
    assert where == [LITERALS[literal]]
