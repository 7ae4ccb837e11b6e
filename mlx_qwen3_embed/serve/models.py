"""The embedding models one server holds (`mlx-embed serve --model A --model B`), by the names clients call them,
each with its own BatchWorker; `pick` answers a request's `model` field.

With one model the field is ignored, as before: clients send names such as "text-embedding-3-small" that were
never this server's. With several, a request without one gets the first model and a name not served is a 404
listing those that are. The workers take the device in turns (worker.Turns), and the reranker, if any, shares the
first model's worker.
"""

from typing import Optional

from ..contracts import EmbeddingModel, RerankModel
from .errors import ApiError
from .metrics import Metrics
from .worker import BatchWorker, Turns


class Served:
    """`embedders` by served name, in order (the first is the default); each gets a BatchWorker built with
    `worker_options` (batch_tokens, max_batch_requests, max_queue). Without embedders, one worker for the reranker."""

    def __init__(self, embedders: dict[str, EmbeddingModel], *, reranker: Optional[RerankModel] = None,
                 metrics: Metrics, **worker_options):
        if not embedders and reranker is None:
            raise ValueError("give an embedder, a reranker or both to serve")
        self.embedders = dict(embedders)
        self.names = list(self.embedders)
        turns = Turns()
        models = list(self.embedders.values()) or [None]
        self.workers = [BatchWorker(model, reranker=reranker if i == 0 else None, metrics=metrics, turns=turns,
                                    **worker_options) for i, model in enumerate(models)]
        self.worker = self.workers[0]  # the default model's, and the reranker's
        if len(self.names) > 1:
            for name, worker in zip(self.names, self.workers):
                metrics.watch_model_queue(name, worker.queue.qsize)

    def pick(self, name: Optional[str], param: str = "model") -> tuple[EmbeddingModel, BatchWorker, str]:
        """The model a request names -> (its embedder, its worker, its served name); an ApiError (404) naming
        those served when `name` is not one of several."""
        if len(self.names) == 1 or name is None:
            return self.embedders[self.names[0]], self.worker, self.names[0]
        if name not in self.embedders and name.removesuffix(":latest") in self.embedders:
            name = name.removesuffix(":latest")  # Ollama's clients add the default tag to a bare name
        if name not in self.embedders:
            raise ApiError(f"model {name!r} is not served here: this server serves {', '.join(self.names)}", param,
                           "model_not_found", status=404)
        i = self.names.index(name)
        return self.embedders[name], self.workers[i], name

    @property
    def alive(self) -> bool:
        return all(worker.alive for worker in self.workers)

    @property
    def queued(self) -> int:
        return sum(worker.queue.qsize() for worker in self.workers)

    def start(self):
        for worker in self.workers:
            worker.start()

    def stop(self):
        for worker in self.workers:
            worker.stop()
