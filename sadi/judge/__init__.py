"""Judged open-ended generations: an OpenAI-compatible judge (`client`), rubrics as files
(`rubrics`), judgements cached on disk (`store`), judge-free scores (`textstats`), and the
judging of a run's generations (`judging`)."""
