"""Several targets for one input in one call, by batch expansion.

``explainer(x, target=[3, 5])``, ``explainer(x, output_relevance=[Region(m, 1), Region(m, 2)])``
or both (lists of the same length; a single target or seed goes with every item of the other
list) explain ``x`` once per item: the batch is repeated ``K`` times, ``(K·N, ...)``, item
``k`` seeds the ``k``-th copy, and one program call computes all of them. The ``Explanation``
has the model output for ``x`` as the model returns it (``N`` samples) and a relevance with a
leading target dimension, ``(K, N, ...)`` (recorded layers likewise). An item is anything a
single call takes: a target (an int, one class per sample, None for the argmax), a seed
(``Region``, ``Unit``, ``Select``, ``Contrast``, a callable) or None; each is checked as in a
single call. Several tensors are given as seeds (``lambda output, target: r``), since a list of
tensors is the output relevance of a model returning a list.

Memory and time grow with ``K·N`` as for a larger batch. An explainer with static shapes
(``example_inputs``) takes its one batch size only: it runs the ``K`` items one after another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lrpfx import guard, outputs
from lrpfx import runtime as rt

Parts = tuple[Any, torch.Tensor, dict[str, torch.Tensor]]  # output, relevance, layers


def _listed(value: Any) -> bool:
    return isinstance(value, list | tuple)


def several(target: Any, output_relevance: Any) -> bool:
    """Whether a call asks for several targets: a list of targets, or a list of seeds (a list
    of tensors is the seed of a list output)."""
    return _listed(target) or (_listed(output_relevance) and all(
        r is None or (callable(r) and not isinstance(r, torch.Tensor))
        for r in output_relevance))


def items(target: Any, output_relevance: Any) -> list[tuple[Any, Any]]:
    """The ``(target, seed)`` pairs of a call, or a ``ValueError`` for lists that do not pair."""
    targets = list(target) if _listed(target) else None
    seeds = list(output_relevance) if several(None, output_relevance) else None
    if targets is not None and seeds is not None and len(targets) != len(seeds):
        raise ValueError(f"target has {len(targets)} items and output_relevance {len(seeds)}; "
                         "give lists of the same length (item k of each explained together) or "
                         "one of them alone")
    count = len(targets if targets is not None else seeds)  # type: ignore[arg-type]
    if count == 0:
        raise ValueError("target is an empty list; give at least one target")
    return list(zip(targets or [target] * count, seeds or [output_relevance] * count,
                    strict=True))


def _chunks(value: Any, count: int) -> list[Any]:
    """``value`` (a tensor or a structure of them) split into ``count`` equal batch chunks."""
    if isinstance(value, torch.Tensor):
        return list(value.chunk(count))
    if isinstance(value, Mapping):
        parts = {key: _chunks(child, count) for key, child in value.items()}
        return [{key: part[k] for key, part in parts.items()} for k in range(count)]
    parts_of = [_chunks(child, count) for child in value]
    return [type(value)(part[k] for part in parts_of) for k in range(count)]


def _cat(values: list[Any]) -> Any:
    """The chunks back into one batch (each a tensor, or structures of one form)."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if isinstance(first, Mapping):
        return {key: _cat([v[key] for v in values]) for key in first}
    return type(first)(_cat([v[i] for v in values]) for i in range(len(first)))


@dataclass(frozen=True, eq=False)
class Stacked:
    """The seed of a batch repeated ``len(items)`` times: item ``k`` = ``(target, seed)`` seeds
    the ``k``-th copy, as it would the whole output in a call of its own."""

    items: tuple[tuple[torch.Tensor | None, Any], ...]

    def __call__(self, output: Any, target: Any) -> Any:
        seeded = []
        for chunk, (mine, seed) in zip(_chunks(output, len(self.items)), self.items,
                                       strict=True):
            relevance = rt.output_relevance(chunk, mine, seed)
            if isinstance(relevance, tuple) and outputs.is_structured(chunk):  # leaves, in order
                relevance = _rebuild(chunk, list(relevance))
            seeded.append(relevance)
        return _cat(seeded)


def _rebuild(like: Any, leaves: list[torch.Tensor]) -> Any:
    """``leaves`` (in ``outputs.leaves`` order) in the form of ``like``."""
    if isinstance(like, torch.Tensor):
        return leaves.pop(0)
    if isinstance(like, Mapping):
        return {key: _rebuild(child, leaves) for key, child in like.items()}
    return type(like)(_rebuild(child, leaves) for child in like)


def explain(explainer: Any, x: torch.Tensor, target: Any, output_relevance: Any) -> Parts:
    """``explainer(x, target, output_relevance=...)`` for several targets (module docstring):
    the parts of its ``Explanation``, an ``lrpfx.Explainer`` given (typed ``Any`` here: the
    explainer module imports this one)."""
    pairs = items(target, output_relevance)
    program, graph_module = explainer.program, explainer.graph_module
    checked = tuple((guard.arguments(program, graph_module, explainer._versions, x, t, r), r)
                    for t, r in pairs)  # each item as a call of its own would check it
    if explainer.static_shape is not None:
        results = [explainer(x, t, output_relevance=r) for t, r in checked]
        layers = {name: torch.stack([out.layers[name] for out in results])
                  for name in results[0].layers}
        return results[0].output, torch.stack([out.relevance for out in results]), layers
    count, n = len(checked), x.shape[0]
    out = explainer(x.repeat((count,) + (1,) * (x.dim() - 1)), None,
                    output_relevance=Stacked(checked))
    layers = {name: r.reshape((count, n) + r.shape[1:]) for name, r in out.layers.items()}
    return (_chunks(out.output, count)[0], out.relevance.reshape((count, n) + x.shape[1:]),
            layers)
