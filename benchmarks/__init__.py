"""Speed benchmarks of sadi: `python -m benchmarks.run` (or `make bench`)."""
