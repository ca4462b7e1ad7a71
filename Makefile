# sadi: `make help` lists the targets.
PY ?= .venv/bin/python
PIP ?= .venv/bin/pip
ARGS ?=
GPU_SITE ?= /tmp/sadi-gpu-site

.DEFAULT_GOAL := help
.PHONY: help setup setup-vllm run test test-main test-vllm test-fast test-latest lock lock-vllm lint bench bench-vllm gpu-check gpu-wheels study docs

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: ## create .venv and install sadi with the CPU torch and the embedded models (offline-ready)
	bash scripts/setup.sh

setup-vllm: ## create .venv-vllm: sadi with vLLM's CPU build (model.backend=vllm, sadi serve, tests/vllm_backend)
	bash scripts/setup-vllm.sh

run: ## the main job: SADI on heads, COPA, embedded SmolLM2 (ARGS="task.limit=20 ..." for overrides)
	$(PY) -m sadi.run $(ARGS)

test: ## all tests: the main suite (slow ones on the embedded model included), then the vLLM backend's in .venv-vllm (set up when missing)
	$(MAKE) --no-print-directory test-main
	$(MAKE) --no-print-directory test-vllm

test-main: ## the main suite in .venv (llama.cpp's Python bindings built first when missing)
	@$(PY) -c "import llama_cpp" 2>/dev/null || bash scripts/setup-llamacpp.sh
	$(PY) -m pytest -q $(ARGS)

test-vllm: ## the vLLM backend's tests (tests/vllm_backend) in .venv-vllm, which is set up first when missing
	@[ -x .venv-vllm/bin/python ] || bash scripts/setup-vllm.sh
	.venv-vllm/bin/python -m pytest -q tests/vllm_backend $(ARGS)

test-fast: ## tests on tiny random models only
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-latest: ## all tests in .venv-latest, on the newest releases the dependency ranges allow
	VENV=.venv-latest CONSTRAINTS= bash scripts/setup.sh
	.venv-latest/bin/python -m pytest -q $(ARGS)

lock: ## rewrite constraints.txt from .venv (after the whole suite passed on it)
	{ sed -n '1,2p' constraints.txt; $(PIP) freeze --exclude-editable 2>/dev/null | grep -v '^#' \
	  | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

lock-vllm: ## rewrite constraints-vllm.txt from .venv-vllm (after tests/vllm_backend passed in it)
	{ sed -n '1,2p' constraints-vllm.txt; .venv-vllm/bin/pip freeze --exclude-editable 2>/dev/null | grep -v '^#' \
	  | grep -v -E '^(vllm==|torchvision|torchaudio|torchcodec)' | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } \
	  > constraints-vllm.txt.new && mv constraints-vllm.txt.new constraints-vllm.txt

lint: ## ruff and mypy
	$(PY) -m ruff check sadi tests benchmarks experiments scripts
	$(PY) -m mypy

docs: ## the documentation site, built strictly (warnings fail) into site/
	$(PY) -m mkdocs build --strict $(ARGS)

bench: ## benchmarks; figures as JSON under benchmarks/results/ (bench-vllm: the vLLM one)
	$(PY) -m benchmarks.run $(ARGS)

gpu-check: ## the prepared GPU check (random 7B/8B shapes, bf16; ~8 min): benchmarks/results/gpu.json
	@if [ -d .whl ]; then $(PY) -m pip install -q --no-index --no-deps --no-compile \
	  --upgrade --target $(GPU_SITE) .whl/*.whl; fi
	PYTHONUNBUFFERED=1 PYTHONPATH=$(if $(wildcard .whl),$(GPU_SITE)) $(PY) scripts/gpu_check.py $(ARGS)

gpu-wheels: ## fetch into .whl/ the wheels gpu-check needs on a PyTorch machine without network
	bash scripts/gpu_wheels.sh

bench-vllm: ## open-ended generation, vLLM vs HF backend under one steerer (.venv-vllm)
	@[ -x .venv-vllm/bin/python ] || bash scripts/setup-vllm.sh
	.venv-vllm/bin/python -m benchmarks.bench_vllm $(ARGS)

study: ## the CPU comparison study: Table 1 (SmolLM2, Gemma 3), behaviour curves, steering vs prompting / LoRA / LoReFT, judged curves (hours; see docs/results.md)
	$(PY) experiments/table1_cpu.py --model smollm2_135m $(ARGS)
	$(PY) experiments/table1_cpu.py --model gemma3_270m $(ARGS)
	$(PY) experiments/behaviours.py --model smollm2_135m $(ARGS)
	$(PY) experiments/baselines.py --model smollm2_135m $(ARGS)
	$(PY) experiments/judged.py --model smollm2_135m $(ARGS)
