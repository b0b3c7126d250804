"""``lrpfx.compile``: the front end (trace, canonize), annotate, check, generate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lrpfx import codegen, composites, passes  # type: ignore[attr-defined]
from lrpfx.explainer import Explainer
from lrpfx.frontend import Frontend, LeafSpec, canonical, eval_mode, static
from lrpfx.frontend.inputs import mark_explained
from lrpfx.model_checks import check_rules, model_to_compile, warn_unmatched_names
from lrpfx.passes.maxpool import MaxPoolMode
from lrpfx.passes.softmax import strip_softmax as check_softmax
from lrpfx.program import PROGRAM_PASSES
from lrpfx.record import RecordSpec, select
from lrpfx.watch import Watch

if TYPE_CHECKING:
    from lrpfx.patterns.store import Patterns


def compile(  # noqa: A001  (the public name is lrpfx.compile)
    model: nn.Module,
    rules: composites.Spec = "epsilon-plus-flat",
    *,
    maxpool: MaxPoolMode = "avg",
    torch_compile: bool = False,
    leaf_modules: Sequence[LeafSpec] = (),
    concrete_args: dict[str, Any] | None = None,
    example_inputs: Any = None,
    record: RecordSpec = None,
    strip_softmax: bool = False,
    patterns: Patterns | None = None,
    explain: str | None = None,
    frontend: Frontend = "auto",
    relevance_dtype: torch.dtype | None = None,
) -> Explainer:
    """Compile ``model`` into an explainer: one generated forward + relevance program.

    Args:
        model: the model, explained with eval semantics (BatchNorm running statistics, no
            dropout). It is only read: parameters, buffers, hooks and flags stay as they are.
        rules: a preset name (``"epsilon-plus-flat"``), a ``Composite``, one ``Rule`` for every
            conv/dense layer, or a map ``{nn.Conv2d: rules.ZPlus(), "features.0": rules.Flat()}``.
        maxpool: ``"avg"`` (relevance through max-pools as through average pools) or ``"wta"``
            (winner-takes-all, as Zennit).
        torch_compile: run the program through ``torch.compile`` (inductor, the program's
            tensors frozen in as constants; the first call compiles).
        leaf_modules: module classes or qualified names to keep whole when tracing.
        concrete_args: passed to ``torch.fx`` tracing, to specialize Python control flow.
        example_inputs: an input, a tuple of the model's positional arguments or a dict of its
            keyword arguments (``{"input_ids": ids, "attention_mask": mask}``), to trace with
            static shapes: control flow on shapes runs as in eager mode, functions wrapped with
            ``torch.fx.wrap`` are traced through (Swin's ``shifted_window_attention``), tensors
            made from shapes (masks) are computed at compile time. The explainer then takes
            inputs of that shape only, as the model takes them (``ex(input_ids=ids,
            attention_mask=mask)``). Optional arguments not given stay at their defaults.
        record: also return layer relevances in ``Explanation.layers``: ``True`` for every
            node, or a list of module paths / node names (``["features.10", "features.20"]``);
            each is the relevance of that node's output (``lrpfx.record``). Compiled in: no
            cost when off.
        strip_softmax: a model whose output is a softmax or log-softmax is refused (LRP
            explains logits); ``True`` explains the logits before it instead.
        explain: the name of the input to explain when the model takes several (default: the
            first floating-point input, else token ids read by an embedding, whose relevance
            is taken at the embedding output and reported per token); the others are passed
            through: their values are computed, and carry no relevance.
        frontend: how the model is read: ``"fx"`` (symbolic tracing), ``"export"``
            (``torch.export``, for models fx cannot trace, such as HuggingFace transformers;
            it needs ``example_inputs``) or ``"auto"`` (fx where it traces, else export).
        relevance_dtype: the dtype the relevance is computed and accumulated in where the
            model's is narrower: ``torch.float32`` explains a bfloat16 or float16 model with
            the same forward as without it (the same output, bit for bit) and a float32 backward
            (forward values and weights read in float32; the relevance comes back in float32).
            None (the default): the model's dtype.
        patterns: fitted signal patterns (``lrpfx.patterns.fit``) for the ``"patternnet"`` and
            ``"patternattribution"`` presets given by name.

    Example:
        >>> explainer = lrpfx.compile(model, "epsilon-plus-flat")
        >>> out = explainer(x, target=3)
        >>> out.relevance.shape == x.shape
    """
    check_rules(rules)
    if relevance_dtype is not None and not (
            isinstance(relevance_dtype, torch.dtype) and relevance_dtype.is_floating_point):
        raise TypeError(f"relevance_dtype must be a floating-point torch.dtype such as "
                        f"torch.float32, got {relevance_dtype!r}")
    model = model_to_compile(model)  # or a TypeError/ValueError naming it; wrappers unwrapped
    composite = composites.resolve(rules, **({} if patterns is None else {"patterns": patterns}))
    examples, keywords = (None, None) if example_inputs is None else static.example_call(
        example_inputs)
    several = explain is not None or len(examples or ()) + len(keywords or ()) > 1
    with torch.inference_mode(False):  # the program's tensors: normal ones, even when called
        watch = Watch(model)  # the user's model, not its eval copy: later changes are refused
        model = eval_mode(model, stacklevel=3)  # in training mode: an eval copy (and a warning)
        gm = canonical(model, leaf_modules, concrete_args, example_inputs=examples,
                       warn_stacklevel=3, example_kwargs=keywords, several=several,
                       frontend=frontend)
        gm = mark_explained(gm, explain)
        warn_unmatched_names(gm, rules, stacklevel=3)
        gm = check_softmax(gm, strip_softmax)
        gm = passes.check(passes.annotate(passes.facts(passes.maxpool(gm, maxpool)), composite))
        recorded = select(gm, record)
        gm = passes.fuse(gm, keep=recorded.values())
        program = codegen.generate(gm, recorded, relevance_dtype)
        for improve in PROGRAM_PASSES:
            program = improve(program)
        return Explainer(program, gm, composite, torch_compile, watch)
