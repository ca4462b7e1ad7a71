"""The sweep engine: many steering conditions of one fit scored on shared unsteered prefixes.

- `prefix`: the scorer. Each log-likelihood row's unsteered prefix (every position before
  its last prompt token) is computed once (`heads`), its KV cache reused for every choice,
  for the baseline and for every sweep point; each condition then runs only the suffix
  (`suffix`). A method that edits the prefix too (AUSteer, positions="all") runs its own
  steered prefix once per condition, still shared by the choices of an item. `rows`: how
  lm-eval's rows split into head and suffix.
- `store`: those scores for a sweep's conditions, computed together and written to disk
  chunk by chunk (a kill loses at most the chunk in progress), and the lm-eval model that
  serves each point's evaluation from them (lm-eval still builds the requests and computes
  the metrics).
- `plan`: the conditions one pass scores (the baseline and a fit's points), by name.
- `protocol`: the narrow protocol through which the engine talks to a steerer.
"""

from sadi.sweep.prefix import PrefixScorer, Row, split_request
from sadi.sweep.store import SweepLM, SweepScores

__all__ = ["PrefixScorer", "Row", "SweepLM", "SweepScores", "split_request"]
