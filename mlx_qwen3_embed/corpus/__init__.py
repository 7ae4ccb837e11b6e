"""Corpus jobs for any embedding model: files of texts or Qwen3-VL items in, vectors out, in resumable windows
(job.py), read and written by files.py (one writer per output format), repeats embedded once (dedup.py)."""

from .job import embed_corpus

__all__ = ["embed_corpus"]
