"""Memory for several models in one process (`mlx-embed serve --model A --model B --reranker R`), planned from
their config files before any of them loads.

Weights add up; working memory does not, because a server's models take turns on the device (serve/worker.py's
Turns): together they need every model's weights plus the largest working memory.
"""

from typing import Optional

from ..device import GB, MEMORY_ENV, DevicePlan, available_memory, fit_memory
from .weights import memory_figures, read_config_json, resolve


def plan_together(models: list[str], plan: DevicePlan, available: Optional[int] = None) -> list[int]:
    """The memory each of `models` (hub ids or folders, in load order) may plan with when they load one after the
    other (pass it to device.memory_left around each load), so that all of them fit `available` bytes (default:
    device.available_memory). A model gets its full `plan` when that leaves room for the least the later ones can
    do with, else (CPU, dequantize not forced) the stored weights, up-cast per layer.

    Raises MemoryError, before any weight is read, naming each model's need when even their least does not fit.
    """
    available = available_memory(plan.device) if available is None else available
    figures = [_figures(model, plan) for model in models]  # (planned, stored, working) bytes
    can_switch = plan.auto_memory and plan.device == "cpu" and not plan.upcast
    least = [stored if can_switch else planned for planned, stored, _ in figures]
    working = max(w for _, _, w in figures)
    if sum(least) + working > available:
        needs = "; ".join(f"{model} {weights / GB:.1f} GB of weights + {w / GB:.1f} GB working memory"
                          for model, weights, (_, _, w) in zip(models, least, figures))
        raise MemoryError(f"the {len(models)} models need about {(sum(least) + working) / GB:.1f} GB together "
                          f"(their weights and the largest working memory: they run one at a time) but only "
                          f"{available / GB:.1f} GB is available: {needs}; serve fewer or smaller models (e.g. 4-bit "
                          f"conversions), or set {MEMORY_ENV} if that figure of free memory is wrong")
    budgets, taken = [], 0
    for i, (model, (planned, stored, w)) in enumerate(zip(models, figures)):
        budget = available - taken - sum(least[i + 1:]) - (working - w)
        fitted = fit_memory(plan, planned, stored, w, budget, name=model)  # fits: budget >= least[i] + w
        taken += stored if fitted.upcast else planned
        budgets.append(budget)
    return budgets


def _figures(model: str, plan: DevicePlan) -> tuple[int, int, int]:
    """weights.memory_figures of any kind, from a hub id's config alone (nothing big is fetched before the plan
    says yes) but for a Qwen3-VL model (embedder or reranker), whose vision tower is sized by its files' headers."""
    folder = resolve(model, weights=False)
    config = read_config_json(folder)
    if config.get("model_type") == "qwen3_vl":
        from .vl_weights import read_vl_config, vision_memory  # only a Qwen3-VL model imports the vision modules

        folder = resolve(model)
        args = read_vl_config(folder, config)
        return memory_figures(folder, plan, config, args.text, vision_memory(folder, plan, config, args))
    return memory_figures(folder, plan, config)
