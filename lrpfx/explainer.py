"""The Explainer: the generated program as an ``nn.Module`` with a friendly call, and its
one-line summary (its ``repr``; ``lrpfx.show`` prints it above the table)."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from torch import fx, nn

from lrpfx import calls, diagnose, guard, meta, outputs, several
from lrpfx.ops.table import OpKind
from lrpfx.watch import Watch


class _Pair(NamedTuple):
    output: Any  # a tensor, or a dict / tuple / list of them as the model returns it
    relevance: torch.Tensor


class Explanation(_Pair):
    """The model output and the input relevance (shaped like the input), a 2-tuple
    (``output, relevance = explainer(x)`` unpacks it), plus ``layers``: the relevances recorded
    with ``lrpfx.compile(..., record=...)`` by name (empty, read-only, when none are), and
    ``embedding``: for explained token ids, the relevance of each dimension of the token
    embeddings, ``(batch, seq, hidden)``, whose sum over the last dimension is ``relevance``
    (None for other inputs)."""

    layers: Mapping[str, torch.Tensor] = MappingProxyType({})
    embedding: torch.Tensor | None = None

    def __new__(cls, output: torch.Tensor, relevance: torch.Tensor,
                layers: Mapping[str, torch.Tensor] | None = None,
                embedding: torch.Tensor | None = None) -> Explanation:
        self = super().__new__(cls, output, relevance)
        if layers:
            self.layers = layers
        if embedding is not None:
            self.embedding = embedding
        return self

    def __repr__(self) -> str:
        form = outputs.shapes(self.output)
        shown = outputs.describe(form) if outputs.is_structured(form) else tuple(form)
        shapes = f"output={shown}, relevance={tuple(self.relevance.shape)}"
        return f"Explanation({shapes}, layers=[{', '.join(self.layers)}])"


class Explainer(nn.Module):
    """Runs the explain program: ``explainer(x, target=None, *, output_relevance=None)``.

    Attributes:
        program: the generated GraphModule (forward and relevance backward in one function).
        graph_module: the annotated canonical graph it was generated from (for ``lrpfx.show``).
        composite: the composite that chose the rules.
    """

    def __init__(self, program: fx.GraphModule, graph_module: fx.GraphModule,
                 composite: object, torch_compile: bool = False,
                 watch: Watch | None = None) -> None:
        """``watch``: the model compiled, as it was at compile time (``lrpfx.watch``); explaining
        after it changed is refused, as after an in-place write to the explainer's tensors."""
        super().__init__()
        self.program = program
        self.graph_module = graph_module
        self.composite = composite
        self.torch_compile = torch_compile
        self._compiled: Callable[..., Any] | None = None  # made at the first call
        self._versions = guard.versions(self, "explainer's")  # to see in-place writes
        self._watch = watch
        self._signature = calls.Signature(graph_module)

    @property
    def code(self) -> str:
        """The Python source of the generated program."""
        return self.program.code

    @property
    def static_shape(self) -> tuple[int, ...] | None:
        """The only input shape this explainer takes when compiled with ``example_inputs``
        (static shapes), else None."""
        return guard.static_shape(self.graph_module)

    def forward(  # type: ignore[override]
        self, *args: torch.Tensor | int | None, target: Any = None, output_relevance: Any = None,
        **inputs: torch.Tensor,
    ) -> Explanation:
        """Explain ``x``: ``explainer(x, target=3)``; a model with several inputs takes them
        as it takes them, ``explainer(input_ids=ids, attention_mask=mask, target=...)``.

        Args:
            args, inputs: a batch of inputs, the model's inputs in order or by name (a
                positional argument after them is the target).
            target: the class to explain: an int, a 1-D LongTensor with one class per sample,
                or None for each sample's argmax. The output relevance is then the target logit
                (``output * one_hot(target)``).
            output_relevance: the relevance at the output instead, shaped like the output, or
                a callable ``(output, target) -> relevance`` run on the real output
                (``lrpfx.targets.one_hot``, ``lrpfx.targets.Contrast(other)``,
                ``Region``, ``Unit``; ``Select(key, ...)`` for a dict / tuple / list output).
                A list of targets or of seeds explains each in the same call
                (``lrpfx.several``): the relevance then has a leading target dimension.

        Returns:
            ``Explanation(output, relevance)``, with ``.layers`` when layers are recorded;
            ``output`` as the model returns it (a dict stays a dict).
        """
        if self._watch is not None:
            self._watch.check()  # or StaleExplainerError
        values, target = self._signature.bind(args, inputs, target)  # or TypeError
        if not self._signature.plain:
            return self._explain_inputs(values, target, output_relevance)
        x = values[0]
        if several.several(target, output_relevance):  # lists: one relevance per item
            return Explanation(*several.explain(self, x, target, output_relevance))
        target = guard.arguments(self.program, self.graph_module, self._versions, x, target,
                                 output_relevance)  # or a named error
        with torch.no_grad():
            result = self._runner()(x, target, output_relevance)
        explanation = Explanation(*result)
        diagnose.finite(self.program, explanation, x, target, output_relevance)
        return diagnose.vanished(self.program, explanation, x, target, output_relevance)

    def _explain_inputs(self, inputs: list[Any], target: Any,
                        output_relevance: Any) -> Explanation:
        """Explain a model with several inputs, or token ids (``lrpfx.calls``)."""
        guard.check_unchanged(self._versions)
        reference = next((t for t in (*self.program.buffers(), *self.program.parameters())
                          if t.is_floating_point()), None)
        dtype = None if reference is None else reference.dtype
        self._signature.check(inputs, dtype, None if reference is None else reference.device)
        target, output_relevance = calls.sequence_target(
            self.graph_module, self._signature, inputs, target, output_relevance)
        target = calls.target_and_shape(self.graph_module, self._signature, inputs, target,
                                        output_relevance, dtype)
        with torch.no_grad():
            output, relevance, *layers = self._runner()(*inputs, target, output_relevance)
        embedding = None
        if self._signature.tokens:
            embedding, relevance = relevance, relevance.sum(-1)
        explanation = Explanation(output, relevance, layers[0] if layers else None, embedding)
        x = inputs[self._signature.explained]
        diagnose.finite(self.program, explanation, x, target, output_relevance, tuple(inputs))
        return diagnose.vanished(self.program, explanation, x, target, output_relevance,
                                 tuple(inputs))

    def _runner(self) -> Callable[..., Any]:
        """The program, or its ``torch.compile`` form. Inductor's freezing folds the program's
        tensors into the compiled code as constants (measured: ResNet-50 from 3.3x to 2.4x a
        forward on 2 CPU threads), so the compiled form is rebuilt when they are replaced."""
        if not self.torch_compile:
            return self.program
        if self._compiled is None:  # a fresh GraphModule: new code, so no stale cache entries
            fresh = fx.GraphModule(self.program, self.program.graph)
            self._compiled = torch.compile(fresh.forward, options={"freezing": True})
        return self._compiled

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Explainer:
        self._compiled = None  # .to(), .double(), ...: new tensors
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Load saved program tensors by replacing this explainer's tensors, never by copying
        into them: many share memory with the model it was compiled from."""
        result = super().load_state_dict(state_dict, strict=strict, assign=True)
        self._compiled = None
        self._versions = guard.versions(self, "explainer's")
        self._watch = None  # the model's tensors: gone
        return result

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "an Explainer cannot be pickled (torch.save(explainer)): its program is generated "
            "code. Save the model and compile it again after loading, or save "
            "explainer.state_dict() and load it into an explainer compiled from the same "
            "architecture with the same rules and options.")

    def __deepcopy__(self, memo: dict[int, Any]) -> Explainer:
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        clone._compiled = None
        return clone

    def __repr__(self) -> str:
        return summary(self.graph_module, self.program, self.composite)


# the op families counted in the summary, in this order
SUMMARY_KINDS = (OpKind.CONV, OpKind.DENSE, OpKind.BATCHNORM, OpKind.MAXPOOL, OpKind.AVGPOOL,
                 OpKind.ADD, OpKind.LAYERNORM, OpKind.MATMUL, OpKind.SOFTMAX)


def summary(graph_module: fx.GraphModule, program: fx.GraphModule, composite: object) -> str:
    """One line: model, composite, how many layers of each kind, what canonization did (the
    ``repr`` of the explainer of ``program``, generated from ``graph_module``)."""
    nodes = [n for n in graph_module.graph.nodes
             if n.op not in ("placeholder", "get_attr", "output")]
    kinds = Counter(n.meta.get(meta.KIND) for n in nodes)
    layers = [f"{kinds[k]} {k}" for k in SUMMARY_KINDS if kinds[k]]
    folded = sum(len(n.meta.get(meta.FOLDED, ())) for n in nodes)
    layers += [f"{folded} BatchNorm folded"] if folded else []
    layers += sorted({f"maxpool={n.meta[meta.MAXPOOL]!r}" for n in nodes
                      if n.meta.get(meta.MAXPOOL)})
    layers += [f"output {n.meta[meta.STRIPPED]} stripped" for n in nodes
               if n.meta.get(meta.STRIPPED)]
    outputs = next(n for n in program.graph.nodes if n.op == "output").args[0]
    if isinstance(outputs, tuple) and len(outputs) == 3:
        layers.append(f"records {len(outputs[2])} layers")  # type: ignore[arg-type]
    name = getattr(composite, "name", type(composite).__name__)
    return (f"Explainer({type(graph_module).__name__}, {name!r}, {len(nodes)} nodes: "
            f"{', '.join(layers)})")
