"""What every layer uses: user errors, atomic writes and locks, on-disk caches, JSON files,
library verbosity."""
