#!/usr/bin/env bash
# Fetch the wheels the prepared GPU check needs on a machine that has PyTorch but no network.
#
#   bash scripts/gpu_wheels.sh          -> .whl/*.whl (git-ignored), the versions CI tests
#
# A GPU machine's image typically holds torch, accelerate, numpy, safetensors and tokenizers
# but not lm-eval (SteeredLM is lm-eval's HFLM), and an older transformers / huggingface_hub
# than constraints.txt pins. These wheels, pure Python, are taken at constraints.txt's
# versions (for Python 3.12, the GPU image's) and installed there in front of the image's own:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site python3 scripts/gpu_check.py
#
# (`make gpu-check` does both when .whl/ exists.) tests/test_gpu_check.py checks that the
# list below is what scripts/gpu_check.py imports beyond a PyTorch image.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${DEST:-.whl}
# What gpu_check.py imports that a PyTorch image lacks or holds at another version.
PACKAGES=(lm_eval transformers huggingface_hub httpx2 httpcore2 truststore dill)
pins=()
for name in "${PACKAGES[@]}"; do
    pin=$(grep -i -E "^${name//_/[-_.]}==" constraints.txt) || {
        echo "gpu_wheels: $name is not pinned in constraints.txt" >&2
        exit 2
    }
    pins+=("$pin")
done
rm -rf "$DEST"
mkdir -p "$DEST"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$DEST" "${pins[@]}"
ls -1 "$DEST"
du -sh "$DEST"
