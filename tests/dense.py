"""An independent dense reference for the LRP rules.

A layer linear in its input becomes its Jacobian matrix ``W`` (out × in) plus the bias vector
``b = f(0)``; each rule is written directly from its formula with matmuls, in float64. No code is
shared with lrpfx.
"""

from __future__ import annotations

import torch
from torch import nn


def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    sign = torch.where(z >= 0, 1.0, -1.0).to(z)
    return z + eps * sign


def as_matrix(layer: nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` with ``layer(x).flatten() == W @ x.flatten() + b`` for inputs of ``shape``."""
    zero = torch.zeros((1, *shape), dtype=torch.float64)
    with torch.no_grad():
        b = layer(zero).flatten()
    jac = torch.autograd.functional.jacobian(lambda x: layer(x).flatten(), zero)
    return jac.reshape(b.numel(), -1), b


def with_weight(layer: nn.Module, fn) -> nn.Module:
    """A copy of ``layer`` whose weight is ``fn(weight)`` and whose bias is zero."""
    import copy

    other = copy.deepcopy(layer)
    with torch.no_grad():
        other.weight.copy_(fn(other.weight))
        if getattr(other, "bias", None) is not None:
            other.bias.zero_()
    return other


def pos(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(min=0)


def neg(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(max=0)


def epsilon(W, b, x, R, eps=1e-6, ignore_bias=False):
    z = W @ x + (0 if ignore_bias else b)
    return x * (W.T @ (R / stab(z, eps)))


def zplus(W, b, x, R, eps=1e-6, ignore_bias=False):
    z = pos(W) @ pos(x) + neg(W) @ neg(x) + (0 if ignore_bias else pos(b))
    s = R / stab(z, eps)
    return pos(x) * (pos(W).T @ s) + neg(x) * (neg(W).T @ s)


def alpha_beta(W, b, x, R, alpha=2.0, beta=1.0, eps=1e-6, ignore_bias=False):
    zp = pos(W) @ pos(x) + neg(W) @ neg(x) + (0 if ignore_bias else pos(b))
    zn = neg(W) @ pos(x) + pos(W) @ neg(x) + (0 if ignore_bias else neg(b))
    sp, sn = R / stab(zp, eps), R / stab(zn, eps)
    rp = pos(x) * (pos(W).T @ sp) + neg(x) * (neg(W).T @ sp)
    rn = pos(x) * (neg(W).T @ sn) + neg(x) * (pos(W).T @ sn)
    return alpha * rp - beta * rn


def gamma(W, b, x, R, g=0.25, eps=1e-6, ignore_bias=False):
    up, down = W + g * pos(W), W + g * neg(W)
    bu = 0 if ignore_bias else b + g * pos(b)
    bd = 0 if ignore_bias else b + g * neg(b)
    z = W @ x + b
    sp = (z > 0) * R / stab(up @ pos(x) + down @ neg(x) + bu, eps)
    sn = (z < 0) * R / stab(down @ pos(x) + up @ neg(x) + bd, eps)
    return (pos(x) * (up.T @ sp) + neg(x) * (down.T @ sp)
            + pos(x) * (down.T @ sn) + neg(x) * (up.T @ sn))


def zbox(W, b, x, R, low, high, eps=1e-6, ignore_bias=False):
    bias = 0 if ignore_bias else b - pos(b) - neg(b)
    z = W @ x - pos(W) @ low - neg(W) @ high + bias
    s = R / stab(z, eps)
    return x * (W.T @ s) - low * (pos(W).T @ s) - high * (neg(W).T @ s)


def flat(M1, R, eps=1e-6):
    """``M1`` is the connectivity matrix (the layer with all weights one)."""
    z = M1 @ torch.ones(M1.shape[1], dtype=M1.dtype)
    return M1.T @ (R / stab(z, eps))


def wsquare(W, b, R, eps=1e-6, ignore_bias=False):
    W2 = W * W
    z = W2 @ torch.ones(W.shape[1], dtype=W.dtype) + (0 if ignore_bias else b * b)
    return W2.T @ (R / stab(z, eps))
