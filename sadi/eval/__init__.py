"""lm-evaluation-harness glue: the steered lm-eval model, scoring a split through lm-eval,
task export and the `sadi-lm-eval` command line, interop with lm-eval's `steered` model."""
