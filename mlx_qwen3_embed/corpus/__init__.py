"""Corpus jobs: files in, vectors out, in resumable windows (job.py), read and written by files.py, repeats
embedded once (dedup.py)."""

from .job import embed_corpus

__all__ = ["embed_corpus"]
