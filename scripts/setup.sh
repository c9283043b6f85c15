#!/usr/bin/env bash
# Create .venv and install cifarlab with the exact versions pinned in constraints.txt.
# Idempotent: a second run only checks. PYTHON picks the interpreter (default python3, >= 3.10).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import cifarlab, torch, torchvision, dvc" 2>/dev/null \
   || [ constraints.txt -nt .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: installing pinned packages (first time: about 2 minutes and 6 GB, torch with its CUDA libraries)"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  touch .venv/.installed
fi
.venv/bin/python -c "import torch, torchvision; print(f'setup: torch {torch.__version__}, torchvision {torchvision.__version__}, cuda available: {torch.cuda.is_available()}')"
