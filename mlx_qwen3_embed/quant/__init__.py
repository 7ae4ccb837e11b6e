"""Conversion to the mlx-community layout: round-to-nearest quantization, streamed writing, DWQ distillation."""
