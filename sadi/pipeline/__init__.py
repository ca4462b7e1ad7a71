"""The Hydra pipeline: config schemas and checks, a run's fit and scoring, resume, selection,
results files and tracking. The only layer that sees the Hydra config."""
