"""Concept Relevance Propagation (CRP): which channels of a layer an explanation goes through.

Achtibat et al., "From attribution maps to human-understandable explanations through Concept
Relevance Propagation" (Nature Machine Intelligence, 2023). The *concepts* of a layer are its
channels (dimension 1 of its output). The relevance ``R_j`` that arrives at channel ``j`` of the
layer ``ℓ``, summed over positions, is how much of the explanation goes through that concept:
the **concept relevance** ``R_c(x) = Σ_{j ∈ c} Σ_p R_{j,p}``. The **conditional relevance** of
a concept ``c`` (a set of channels) is LRP with the relevance at ``ℓ`` masked to the concept::

    R^ℓ(x | c)_j = R^ℓ_j(x) · [j ∈ c]        then propagated down to the input as usual

The rules below ``ℓ`` are linear in the relevance they receive (every rule divides it by a
``z`` of the forward pass), so the conditional heatmaps of a partition of the channels add up
to the unconditional heatmap when all relevance passes through ``ℓ``: in a chain, or at a
block's output in a ResNet. Relevance that bypasses ``ℓ`` (a skip connection around a layer
inside a residual block) is not conditioned and is in every conditional heatmap;
``ConceptExplainer.bypassed`` says so, and compiling warns. A relevance filter
(``filters.TopK``) below ``ℓ`` breaks the sum too.

``concepts.compile(model, rules, layer="features.10")`` generates *one* program: the layer's
relevance is recorded (``lrpfx.record``) and masked before it goes on, with the mask an argument
of the program. Several concepts are explained in one call by batch expansion: the input is
repeated once per concept and each copy's relevance at ``ℓ`` is masked to its concept::

    crp = lrpfx.concepts.compile(model, "epsilon-plus-flat", layer="features.10")
    out = crp(x, concepts=[[3], [17], [3, 17]], target=281)
    out.relevance          # (N, 3, *x.shape[1:]): one heatmap per concept
    out.concepts           # (N, C): the relevance of every channel of the layer
    crp.relevances(x)      # (N, C) alone, without conditional heatmaps
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import fx, nn

from lrpfx import meta
from lrpfx.compiler import compile as compile_explainer
from lrpfx.errors import VanishedRelevanceWarning
from lrpfx.explainer import Explainer, Explanation
from lrpfx.record import select

ConceptSpec = Sequence[int | Sequence[int]]

CHANNELS = "concept_channels"  # the program's argument: the channels kept, one row per sample


def condition(relevance: torch.Tensor, channels: torch.Tensor | None) -> torch.Tensor:
    """``relevance`` with every channel (dimension 1) not listed in the sample's row of
    ``channels`` set to zero; ``channels`` is ``(N, M)``, padded with ``-1``; None keeps all.

    Raises:
        ValueError: a channel that the layer does not have (under ``torch.compile``,
            ``ConceptExplainer`` checks it before the call once it knows the layer's width).
    """
    if channels is None:
        return relevance
    n, c = relevance.shape[:2]
    if not torch.compiler.is_compiling() and channels.numel() and int(channels.max()) >= c:
        raise ValueError(f"concept channel {int(channels.max())} is not a channel of the layer "
                         f"(it has {c}: 0..{c - 1})")
    index = torch.where(channels < 0, c, channels)  # padding goes to a column that is cut off
    mask = relevance.new_zeros(n, c + 1).scatter_(1, index, 1.0)[:, :c]
    return relevance * mask.view(n, c, *(1,) * (relevance.dim() - 2))


def bypassed(gm: fx.GraphModule, layer: fx.Node) -> bool:
    """Whether relevance reaches the input of the canonical graph ``gm`` without passing
    through ``layer``: a path from the input to the output along relevance-carrying nodes that
    avoids it."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    seen: set[fx.Node] = set()
    todo = [n for n in inputs if n is not layer]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        for user in node.users:
            if user.op == "output":
                return True
            if user is not layer and user.meta.get(meta.CONE):
                todo.append(user)
    return False


def conditioned(program: fx.GraphModule, layer: str) -> fx.GraphModule:
    """A copy of ``program`` (generated with ``record=[layer, ...]``) with one more argument,
    ``concept_channels``: the relevance of ``layer`` is ``condition``-ed by it before it is
    propagated further. The recorded relevance of ``layer`` stays the unmasked one; the input
    relevance and every relevance below ``layer`` are conditional."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.graph_copy(program.graph, env)  # everything but the output node
    old_output = next(n for n in program.graph.nodes if n.op == "output")
    output, relevance, layers = old_output.args[0]  # type: ignore[misc]
    assert isinstance(layers, dict), "the program records no layers"
    recorded = env[layers[layer]]
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(last):
        channels = graph.placeholder(CHANNELS, default_value=None)
    with graph.inserting_after(recorded):
        masked = graph.call_function(condition, (recorded, channels))
    recorded.replace_all_uses_with(masked, delete_user_cb=lambda user: user is not masked)
    kept = {name: env[node] for name, node in layers.items()}  # recorded values: unmasked
    result = env[relevance]  # type: ignore[index]
    graph.output((env[output], masked if result is recorded else result, kept))  # type: ignore[index]
    graph.lint()
    return fx.GraphModule(program, graph, "ConceptProgram")


class ConceptExplanation(NamedTuple):
    """The result of ``ConceptExplainer(x, concepts)``.

    Attributes:
        output: the model output, ``(N, classes)``.
        relevance: the conditional heatmaps, ``(N, K, *x.shape[1:])``, one per concept.
        concepts: the relevance of every channel of the layer (summed over the other
            dimensions), ``(N, C)``: unconditional, the same for every concept.
        layers: the other recorded layer relevances, ``(N, K, ...)``: below the layer they are
            conditional, above it they are the same for every concept.
    """

    output: torch.Tensor
    relevance: torch.Tensor
    concepts: torch.Tensor
    layers: Mapping[str, torch.Tensor]


def channel_relevance(layer_relevance: torch.Tensor) -> torch.Tensor:
    """The relevance of each channel: a layer relevance ``(N, C, ...)`` summed over all but the
    first two dimensions."""
    return layer_relevance.flatten(2).sum(2) if layer_relevance.dim() > 2 else layer_relevance


def channel_rows(concepts: ConceptSpec, device: torch.device) -> torch.Tensor:
    """The concepts as a ``(K, M)`` LongTensor of channels padded with ``-1``.

    Raises:
        ValueError: no concepts, an empty concept or a negative channel.
    """
    if len(concepts) == 0:
        raise ValueError("concepts: give at least one concept (a channel or a list of them)")
    rows = [[c] if isinstance(c, int) else [int(k) for k in c] for c in concepts]
    if any(len(row) == 0 for row in rows) or any(k < 0 for row in rows for k in row):
        raise ValueError(f"concepts: every concept is a non-empty list of channel indices "
                         f"(>= 0), got {list(concepts)!r}")
    width = max(map(len, rows))
    padded = [row + [-1] * (width - len(row)) for row in rows]
    return torch.tensor(padded, dtype=torch.long, device=device)


def _expand(value: Any, k: int) -> Any:
    """A per-sample tensor repeated ``k`` times, sample by sample; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.repeat_interleave(k, dim=0)
    return value


class ConceptExplainer(Explainer):
    """An explainer whose program masks the relevance of ``layer`` to chosen channels
    (:func:`compile`). Call it with ``concepts``; ``relevances`` gives the channel relevances.

    Attributes:
        layer: the layer whose channels are the concepts (a module path or fx node name).
        bypassed: some relevance goes around the layer (a skip connection): it is in every
            conditional heatmap, unconditioned.
    """

    layer: str
    bypassed: bool
    _channels: torch.Tensor | None = None  # the mask rows of the call under way
    _width: int | None = None  # the layer's number of channels, once seen

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, concepts: ConceptSpec, target: int | torch.Tensor | None = None,
        *, output_relevance: torch.Tensor | Callable[..., torch.Tensor] | None = None,
    ) -> ConceptExplanation:
        """Explain ``x`` once per concept, in one call of the program.

        Args:
            x: a batch of ``N`` inputs.
            concepts: ``K`` concepts, each a channel of the layer or a list of channels.
            target, output_relevance: as for ``Explainer``.

        Returns:
            ``ConceptExplanation``; ``relevance[n, k]`` is the heatmap of sample ``n`` through
            concept ``k``.
        """
        rows = channel_rows(concepts, x.device)
        if self._width is not None and int(rows.max()) >= self._width:
            raise ValueError(f"concept channel {int(rows.max())} is not a channel of the layer "
                             f"(it has {self._width}: 0..{self._width - 1})")
        k = rows.shape[0]
        out = self._run(x.repeat_interleave(k, dim=0), rows.repeat(x.shape[0], 1),
                        _expand(target, k), _expand(output_relevance, k))
        per = {name: r.unflatten(0, (x.shape[0], k)) for name, r in out.layers.items()
               if name != self.layer}
        return ConceptExplanation(out.output[::k], out.relevance.unflatten(0, (x.shape[0], k)),
                                  channel_relevance(out.layers[self.layer][::k]), per)

    def relevances(self, x: torch.Tensor, target: int | torch.Tensor | None = None, *,
                   output_relevance: torch.Tensor | Callable[..., torch.Tensor] | None = None,
                   ) -> torch.Tensor:
        """The relevance of every channel of the layer, ``(N, C)`` (no concept masked)."""
        out = self._run(x, None, target, output_relevance)
        return channel_relevance(out.layers[self.layer])

    def explain(self, x: torch.Tensor, target: int | torch.Tensor | None = None, *,
                output_relevance: torch.Tensor | Callable[..., torch.Tensor] | None = None,
                ) -> Explanation:
        """The unconditional explanation (``Explanation``, the layer's relevance recorded)."""
        return self._run(x, None, target, output_relevance)

    def _run(self, x: torch.Tensor, channels: torch.Tensor | None, target: Any,
             output_relevance: Any) -> Explanation:
        self._channels = channels
        try:
            with warnings.catch_warnings():  # a concept with no relevance is an answer
                if channels is not None:
                    warnings.simplefilter("ignore", VanishedRelevanceWarning)
                out = super().forward(x, target, output_relevance=output_relevance)
            self._width = out.layers[self.layer].shape[1]
            return out
        finally:
            self._channels = None

    def _runner(self) -> Callable[..., Any]:
        run, channels = super()._runner(), self._channels
        return lambda *args: run(*args, channels)


def compile(  # noqa: A001  (lrpfx.concepts.compile, as lrpfx.compile)
    model: nn.Module, rules: Any = "epsilon-plus-flat", *, layer: str,
    record: Sequence[str] = (), **options: Any,
) -> ConceptExplainer:
    """A ``ConceptExplainer`` whose concepts are the channels of ``layer``.

    Args:
        model, rules, options: as for ``lrpfx.compile`` (``maxpool``, ``torch_compile``, ...).
        layer: a name ``lrpfx.compile(..., record=[layer])`` accepts: a module path
            (``"features.10"``) or an fx node name.
        record: further layers to record.

    An explainer compiled with ``example_inputs`` (static shapes) takes batches of that size
    only: for ``N`` inputs and ``K`` concepts per call, give an example batch of ``N·K``.

    Raises:
        ValueError: ``layer`` is not a node on the relevance path (the names that are listed).

    Warns:
        UserWarning: relevance bypasses ``layer`` (``ConceptExplainer.bypassed``).
    """
    if isinstance(record, str):
        record = [record]
    names = [layer, *(r for r in record if r != layer)]
    base = compile_explainer(model, rules, record=names, **options)
    program = conditioned(base.program, layer)
    explainer = ConceptExplainer(program, base.graph_module, base.composite,
                                 base.torch_compile, base._watch)
    explainer.layer = layer
    explainer.bypassed = bypassed(base.graph_module, select(base.graph_module, [layer])[layer])
    if explainer.bypassed:
        warnings.warn(f"concepts: some relevance bypasses layer {layer!r} (a skip connection "
                      "around it); it is not conditioned and is part of every conditional "
                      "heatmap. Choose a layer that all relevance passes through (a block's "
                      "output) for heatmaps that add up to the unconditional one.", stacklevel=2)
    return explainer
