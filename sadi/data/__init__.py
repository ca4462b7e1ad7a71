"""Task data: the registered tasks and their splits (`tasks`), contrastive pairs, chat
templates."""
