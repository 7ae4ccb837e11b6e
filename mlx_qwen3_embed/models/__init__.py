"""MLX model definitions only: arrays in, arrays out; no files, tokenizers or HTTP."""
