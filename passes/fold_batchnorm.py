"""fold_batchnorm: an eval-mode BatchNorm right after a conv or linear becomes part of it.

Before: ``affine(conv(x, w, b), scale, shift)`` (normalize's form of a BatchNorm), the conv
output used by the affine only.
After:  ``conv(x, w', b')`` with ``w' = w * scale`` (per output channel) and
``b' = b * scale + shift`` as new buffers; the conv's ``meta["lrpfx.folded"]`` names the
BatchNorm. The outputs are unchanged; the user's tensors are not touched. A layer called at two
sites, each followed by its own BatchNorm, gets folded constants per call site.

First, a functional BatchNorm (``F.batch_norm(x, mean, var, w, b, False, _, eps)`` with constant
statistics and parameters, as timm's ``BatchNormAct2d`` calls it) becomes the ``affine`` an
``nn.BatchNorm2d`` is, with the same constants; one whose statistics are computed from the
input is marked unsupported.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx import meta
from lrpfx import runtime as rt
from lrpfx.ops import table
from lrpfx.ops.layers import CONV_TRANSPOSES, batchnorm_affine
from lrpfx.ops.table import OpKind

# the op families a BatchNorm after them folds into (not a transposed conv: its output channels
# are its weight's second dimension)
FOLDABLE = (OpKind.CONV, OpKind.DENSE)


def fold_affine(
    weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of ``affine(layer(x))`` as one layer: the pure tensor math."""
    folded_weight = weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1))
    folded_bias = shift if bias is None else bias * scale + shift
    return folded_weight, folded_bias


def _value(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    if not isinstance(node, fx.Node):
        return None
    assert node.op == "get_attr"
    return getattr(gm, str(node.target))


def _foldable(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target is not rt.affine:
        return False
    layer = node.args[0]
    return (
        isinstance(layer, fx.Node) and layer.op == "call_function"
        and table.kind_of(layer.target) in FOLDABLE and layer.target not in CONV_TRANSPOSES
        and len(layer.users) == 1
        and all(isinstance(a, fx.Node) and a.op == "get_attr" for a in node.args[1:3])
        and isinstance(layer.args[1], fx.Node) and layer.args[1].op == "get_attr"
    )


def _fresh(gm: fx.GraphModule, name: str) -> str:
    """``name``, or ``name_1``, ``name_2``...: a layer called twice, each call followed by its
    own BatchNorm, gets two folded constants, never one overwritten by the other."""
    candidates = itertools.chain([name], (f"{name}_{i}" for i in itertools.count(1)))
    return next(c for c in candidates if not hasattr(gm, c))


def _functional(gm: fx.GraphModule, node: fx.Node) -> None:
    """``F.batch_norm`` with constant arguments as ``affine(x, scale, shift)``."""
    x, *params = node.args[:5]
    if not all(p is None or isinstance(p, fx.Node) and p.op == "get_attr" for p in params):
        node.meta[meta.UNSUPPORTED] = ("F.batch_norm whose statistics or parameters are "
                                       "computed from the input: no eval-mode BatchNorm")
        return
    mean, var, weight, bias = (None if p is None else _value(gm, p).detach()  # type: ignore[union-attr]
                               for p in params)
    assert mean is not None and var is not None
    scale, shift = batchnorm_affine(mean, var, weight, bias, float(node.args[7]))  # type: ignore[arg-type]
    base = meta.display_name(node)
    with gm.graph.inserting_before(node):
        constants = []
        for value, suffix in ((scale, "scale"), (shift, "shift")):
            name = _fresh(gm, f"{base}_{suffix}")
            gm.register_buffer(name, value)
            constants.append(gm.graph.get_attr(name))
        affine = gm.graph.call_function(rt.affine, (x, *constants))
    affine.meta = dict(node.meta)
    node.replace_all_uses_with(affine)
    gm.graph.erase_node(node)


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every foldable BatchNorm (see the module docstring)."""
    for node in list(gm.graph.find_nodes(op="call_function", target=F.batch_norm)):
        if meta.UNSUPPORTED not in node.meta:  # normalize's canonical form (running statistics)
            _functional(gm, node)
    for node in list(gm.graph.nodes):
        if not _foldable(node):
            continue
        layer: fx.Node = node.args[0]  # type: ignore[assignment]
        weight, bias = _value(gm, layer.args[1]), _value(gm, layer.args[2])
        scale, shift = _value(gm, node.args[1]), _value(gm, node.args[2])
        assert weight is not None and scale is not None and shift is not None
        new_weight, new_bias = fold_affine(weight, bias, scale, shift)
        base = meta.display_name(layer)
        args = list(layer.args)
        with gm.graph.inserting_before(layer):
            for index, value, suffix in ((1, new_weight, "weight"), (2, new_bias, "bias")):
                name = _fresh(gm, f"{base}_{suffix}_folded")  # one per call site
                gm.register_buffer(name, value)
                args[index] = gm.graph.get_attr(name)
        layer.args = tuple(args)
        bn_path = node.meta.get(meta.PATH, node.name)
        layer.meta[meta.FOLDED] = [*layer.meta.get(meta.FOLDED, []), bn_path]
        node.replace_all_uses_with(layer)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm
