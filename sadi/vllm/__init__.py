"""Steered models inside vLLM without a fork: a worker extension installs a fitted steerer's
edits at the HF backend's cells, per request (`sites` where, `worker` the hooks, `engine`
the engine, `lm` lm-eval's model)."""
