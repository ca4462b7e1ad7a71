#!/usr/bin/env bash
# Build llama.cpp's Python bindings (llama-cpp-python, a PyPI sdist) into .venv: the
# llama.cpp that tests/test_llamacpp.py checks sadi's control vectors against.
#
# PyPI has no CPU wheel of it, so pip compiles llama.cpp (~6 min on 2 cores). The wheel is
# kept in ~/.cache/sadi/wheels (keyed by version and flags) and reused on this machine.
# Flags: no -march=native (a build for this CPU's AMX/AVX-512 died with "Illegal
# instruction" here), AVX2/FMA/F16C instead; no OpenMP, tools, examples or tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_OPENMP=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF"
TAG=$(printf '%s %s' "$VERSION" "$FLAGS" | sha256sum | cut -c1-12)
WHEELS=${SADI_WHEELS:-$HOME/.cache/sadi/wheels}/llama-cpp-python-$TAG
PIP="$VENV/bin/pip --disable-pip-version-check -q"
# pip's notes about this machine's unused local index folders are noise in CI's log
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $VERSION (llama.cpp from source, a few minutes)"
    CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
        quiet $PIP wheel --no-cache-dir --no-deps -w "$WHEELS" "llama-cpp-python==$VERSION"
fi
quiet $PIP install -c constraints.txt "$WHEELS"/llama_cpp_python-*.whl
"$VENV/bin/python" -c "import llama_cpp; print(f'llama-cpp-python {llama_cpp.__version__} in $VENV')"
