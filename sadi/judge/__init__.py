"""Judged open-ended generations: an OpenAI-compatible judge (`client`), rubrics as files
(`rubrics`), judgements cached on disk (`store`), judge-free scores (`textstats`), the
judging of a run's generations (`judging`), and a judge's check on clear-cut answer pairs
(`check`)."""
