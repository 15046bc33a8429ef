"""The model layer: loading (embedded GGUF, Mistral/Magistral NF4 with tekken), generation, fast decode,
pre-quantized NF4 checkpoints, random-weight Mistral folders for tests and benchmarks."""
