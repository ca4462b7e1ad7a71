"""`sadi serve`: an OpenAI-compatible HTTP server of a steered model, steerers loaded by name
from run directories at start and chosen per request (`generators` generate, `app` speaks
HTTP, `__main__` is the command line)."""
