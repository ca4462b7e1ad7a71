"""The mechanics of reading and editing a model: architectures (one data entry each), loading,
hooks, forward kinds, token positions, faithful SADI's shadow, activations, fingerprints."""
