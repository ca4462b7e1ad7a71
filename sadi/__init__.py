"""sadi: reproduce and compare activation-steering methods for large language models."""

__version__ = "0.1.0"
