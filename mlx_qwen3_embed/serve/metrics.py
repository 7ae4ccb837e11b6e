"""The server's Prometheus metrics, one prometheus_client registry per app (two apps in a process never mix).

Names and meanings: requests by path and status, inputs and tokens embedded, inputs cut to max_length by dialect
(Ollama cuts by default; we count it, and the answers name them: serve/schema.py), the worker's packed calls and
queue, latency histograms.
"""

from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The app's counters and histograms; `exposition()` is the /metrics text."""

    def __init__(self, registry: Optional[CollectorRegistry] = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("mlx_embed_requests", "HTTP requests by path and status code.", ("path", "code"),
                                registry=r)
        self.inputs = Counter("mlx_embed_inputs", "Inputs (texts or token lists) embedded.", registry=r)
        self.prompt_tokens = Counter("mlx_embed_prompt_tokens", "Tokens embedded (usage.prompt_tokens summed).",
                                     registry=r)
        self.truncated = Counter("mlx_embed_truncated_inputs", "Inputs cut to max_length (the request's truncate, "
                                 "or Ollama's default truncate=true), by API dialect.", ("api",), registry=r)
        self.batches = Counter("mlx_embed_batches", "Packed model calls made by the worker.", registry=r)
        self.cancelled = Counter("mlx_embed_cancelled_requests", "Requests dropped by the worker: their client "
                                 "hung up.", registry=r)
        self.dropped_inputs = Counter("mlx_embed_dropped_inputs", "Inputs of those requests that were never run.",
                                      registry=r)
        self.queue_depth = Gauge("mlx_embed_queue_depth", "Requests waiting for the worker.", registry=r)
        self.model_queue_depth = Gauge("mlx_embed_model_queue_depth", "Requests waiting for one model's worker "
                                       "(a server of several models).", ("model",), registry=r)
        self._depths: list[Callable[[], int]] = []
        self._caches = _CacheCollector()
        self.batch_requests = Histogram("mlx_embed_batch_requests", "Requests packed into one model call.",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_inputs = Histogram("mlx_embed_batch_inputs", "Inputs packed into one model call.",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), registry=r)
        self.batch_tokens = Histogram("mlx_embed_batch_tokens", "Tokens packed into one model call.",
                                      buckets=(16, 64, 256, 1024, 4096, 16384, 65536), registry=r)
        self.latency = Histogram("mlx_embed_request_duration_seconds", "Embedding request latency, arrival to "
                                 "answer.", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=r)

    def count(self, path: str, status: int):
        self.requests.labels(path, str(status)).inc()

    def embedded(self, inputs: int, tokens: int):
        """A request's answer went out: `inputs` vectors from `tokens` tokens."""
        self.inputs.inc(inputs)
        self.prompt_tokens.inc(tokens)

    def batch(self, requests: int, inputs: int, tokens: int):
        """The worker ran one packed call."""
        self.batches.inc()
        self.batch_requests.observe(requests)
        self.batch_inputs.observe(inputs)
        self.batch_tokens.observe(tokens)

    def dropped(self, inputs: int):
        """The worker dropped a request whose client hung up, with `inputs` of its inputs never run."""
        self.cancelled.inc()
        self.dropped_inputs.inc(inputs)

    def watch_queue(self, depth: Callable[[], int]):
        """Export a worker's queue depth (several workers: the total)."""
        self._depths.append(depth)
        self.queue_depth.set_function(lambda: sum(d() for d in self._depths))

    def watch_model_queue(self, model: str, depth: Callable[[], int]):
        """Export the queue depth of the worker serving `model` (a server of several models), labelled with it."""
        self.model_queue_depth.labels(model).set_function(depth)

    def watch_cache(self, cache):
        """Export the hits and misses of an Embedder's vector cache (`load(..., cache_size=N)`), read at scrape time
        (several models' caches: their sums)."""
        if not self._caches.caches:
            self.registry.register(self._caches)
        self._caches.caches.append(cache)

    def value(self, name: str, labels: Optional[dict] = None) -> float:
        """One sample's current value (0 when never set), e.g. value("mlx_embed_batch_requests_sum")."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _CacheCollector:
    """The vector caches count their own lookups; this reads them when /metrics is scraped."""

    def __init__(self):
        self.caches = []

    def collect(self):
        for kind, said in (("hits", "had"), ("misses", "lacked")):
            family = CounterMetricFamily(f"mlx_embed_cache_{kind}", f"Inputs whose vector the cache {said}.")
            family.add_metric([], sum(getattr(cache, kind) for cache in self.caches))
            yield family
