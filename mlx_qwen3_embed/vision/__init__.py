"""Qwen3-VL: the image/video/mixed-item embedder and its pixels (images, video files, remote images)."""
