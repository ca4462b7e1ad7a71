"""llama.cpp control vectors: a fitted per-layer additive steerer (CAA, SAS in decoder mode)
exported as the GGUF file `llama-server --control-vector` loads, and GGUF control vectors
(repeng's, llama.cpp's `cvector-generator`) imported as CAA steerers."""
