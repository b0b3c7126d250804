"""Cheaper programs for special cases of the linear recipe (``lrpfx.ops.linear``), same results.

- **Known signs.** A group whose every term is ``≥ 0`` (non-negative input times non-negative
  weight, as z⁺ on a ReLU output, or ones times ones for the flat rule) has ``z ≥ 0``, so
  ``stabilize(z, ε) = z + ε`` exactly: one addition, done in place, instead of a sign test.
- **Flat on a convolution.** With ones for input and weights, ``z_j`` is the number of inputs in
  the receptive field (the same for every output channel and sample) and the transpose sums
  ``s`` over the output channels and the window (the same for every input channel). So ``z`` is
  a one-channel convolution of ones over one sample, and ``c`` a one-channel transposed
  convolution of ``Σ_channels s``, copied to the input channels: the layer's cost becomes that
  of a one-channel layer.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx import runtime as rt
from lrpfx.builder import Builder, like
from lrpfx.rules import ONES, Mod, Term

CONVOLUTIONS = (F.conv1d, F.conv2d, F.conv3d)
_INPUT_SIGNS = {"x+": 1, "x-": -1, "ones": 1}
_WEIGHT_SIGNS = {"pos": 1, "neg": -1, "ones": 1, "sq": 1}


def _sign(mod: Mod | None) -> int:
    return 1 if mod is None else _WEIGHT_SIGNS.get(mod.name, 0)


def nonnegative(terms: list[Term], nonneg_input: bool, weighted: bool, biased: bool) -> bool:
    """Whether ``z = Σ sign·f(input; w, b)`` is ``≥ 0`` whatever the input: every term is a
    product of factors of known sign (``weighted=False``: a pool, whose weights are ``> 0``)."""
    for t in terms:
        sign_in = 1 if t.input == "x" and nonneg_input else _INPUT_SIGNS.get(t.input, 0)
        sign_w = _sign(t.weight) if weighted else 1
        if t.sign * sign_in * sign_w <= 0:
            return False
        if biased and t.bias is not None and t.sign * _sign(t.bias) <= 0:
            return False
    return True


def flat_convolution(b: Builder, node: fx.Node, terms: list[Term]) -> bool:
    """The flat rule on a convolution without groups takes the one-channel shortcut."""
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    return bool(node.target in CONVOLUTIONS and groups == 1 and len(terms) == 1
                and terms[0] == Term("ones", ONES, None))


def flat_conv(b: Builder, node: fx.Node, rel: fx.Node, epsilon: float | fx.Node) -> fx.Node:
    """The flat rule's input relevance of a convolution, through one channel (module doc)."""
    tag = b.name(node)
    x = b[node.args[0]]
    weight = b.tensor(node.args[1])  # type: ignore[arg-type]
    window = tuple(b.map(a) for a in node.args[3:6])  # stride, padding, dilation
    kernel = b.constant(torch.ones((1, 1, *weight.shape[2:]), dtype=weight.dtype,
                                   device=weight.device), name=f"ones_kernel_{tag}")
    ones = b.call(rt.ones_spatial, x, name=f"ones_{tag}")
    count = b.call(node.target, ones, kernel, None, *window, 1, name=f"z_{tag}")  # type: ignore[arg-type]
    channels = weight.shape[1]
    z = count if channels == 1 else b.call(operator.mul, count, channels, name=f"z_{tag}")
    z = like(b.call(operator.add, z, epsilon, name=f"z_{tag}"), 0)
    s = like(b.call(operator.truediv, rel, z, name=f"s_{tag}"), 0)
    s = b.call(rt.channel_sum, s, name=f"s_{tag}")
    one = b.call(rt.one_channel, x, name=f"one_channel_{tag}")
    c = b.call(rt.conv_transpose, s, one, kernel, *window, 1, name=f"c_{tag}")
    return b.call(rt.repeat_channels, c, x, name=f"r_{tag}")
