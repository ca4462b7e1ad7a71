"""Sparse autoencoders (SAEs) of one layer's residual stream, in SAELens' on-disk format:
loading (a local directory, or SAELens releases for users with the hub), saving, encoding
and decoding for the standard (ReLU), JumpReLU and TopK architectures.

Modules: ``model`` (the `SparseAutoencoder` module, `load_sae`, `save_sae`,
`from_pretrained`), ``train`` (offline TopK training with quality figures and a cache;
`python -m sadi.sae train model=... layer=...`), ``activations`` (the text and activations
it trains on), ``trainer`` (the TopK trainer), ``source`` (where a steerer's SAE comes
from), ``analysis`` (what a steering vector in SAE space means). Nothing here imports
SAELens unless `from_pretrained` is called.
"""

from sadi.sae.model import (
    ARCHITECTURES,
    CFG_FILE,
    WEIGHTS_FILE,
    SAEConfig,
    SAEFormatError,
    SparseAutoencoder,
    from_pretrained,
    load_sae,
    sae_fingerprint,
    save_sae,
)

__all__ = [
    "ARCHITECTURES",
    "CFG_FILE",
    "SAEConfig",
    "SAEFormatError",
    "SparseAutoencoder",
    "WEIGHTS_FILE",
    "from_pretrained",
    "load_sae",
    "save_sae",
    "sae_fingerprint",
]
