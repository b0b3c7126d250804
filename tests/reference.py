"""An independent, slow, per-node LRP reference for whole graphs.

``torch.fx.symbolic_trace`` plus an ``fx.Interpreter`` give every node's value; the backward walks
the nodes in reverse and, for each one, turns the node into a dense Jacobian (by autograd, at
its actual inputs) and applies the rule's formula with matmuls (``tests/dense.py``). Nothing of
lrpfx is imported: no tracing, canonicalization, registry or code generation is shared.

Conventions (those of the lrpfx presets, restated from their papers):

- conv/linear (with a BatchNorm right after it folded: the pair is one affine map): the rule
  returned by ``layer_rule(position, kind)``;
- ``a + b``, ``a - b``, mean/sum, average pools: Norm ``R_k = a_k ⊙ J_kᵀ (R / stab(z))``;
  constants keep their share;
- ``a * b`` with a constant factor: ``R_a = E_aᵀ R`` (E: the broadcast); with a factor from a
  sigmoid/hard sigmoid/softmax (the gate): the other factor takes ``E_aᵀ R``;
- routing (cat, getitem, chunk, permute, view...), max-pool winner-takes-all: ``Jᵀ R``;
- elementwise activations, standalone BatchNorm, dropout: ``R`` passes;
- LayerNorm: LRP-ε on its Jacobian with σ held constant (Ali et al. 2022).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from tests import dense

LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
                nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Dropout, nn.Identity,
                nn.modules.batchnorm._BatchNorm)
NORM_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
PASS_FUNCTIONS = {torch.relu, F.relu, torch.sigmoid, F.silu, F.gelu, F.hardswish, F.relu6,
                  torch.tanh, F.hardsigmoid, F.dropout, F.leaky_relu, F.softmax}
PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}
GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softmax)
GATE_FUNCTIONS = {torch.sigmoid, F.hardsigmoid, F.softmax, torch.softmax}
NORM_FUNCTIONS = {operator.add, operator.iadd, torch.add, operator.sub, torch.sub, torch.mean,
                  torch.sum, F.avg_pool2d, F.adaptive_avg_pool2d}
NORM_METHODS = {"add", "sub", "mean", "sum"}
MUL = {operator.mul, operator.imul, torch.mul, "mul", operator.truediv, torch.div}
VIEWS = {"view", "reshape", "flatten", "unsqueeze", "squeeze", "permute", "transpose",
         "expand", "expand_as", torch.flatten, torch.reshape, torch.permute, torch.transpose,
         torch.unsqueeze, torch.squeeze, operator.getitem}

OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub,
                operator.imul: operator.mul}

LayerRule = Callable[[int, str], tuple]  # (position, "conv"/"dense") -> ("epsilon", eps, ...)


def jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``∂ fn(x) / ∂ x`` as a matrix (outputs × inputs), by autograd (for max-pools)."""
    jac = torch.autograd.functional.jacobian(lambda t: fn(t).reshape(-1), x, vectorize=True)
    return jac.reshape(-1, x.numel())


def linear_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                    ) -> torch.Tensor:
    """The matrix of a map ``fn`` affine in its argument: column ``i`` is ``fn(e_i) − fn(0)``."""
    with torch.no_grad():
        zero = torch.zeros(x.shape, dtype=x.dtype)
        f0 = fn(zero).reshape(-1)
        columns = []
        for i in range(x.numel()):
            e = zero.clone()
            e.view(-1)[i] = 1.0
            columns.append(fn(e).reshape(-1) - f0)
    return torch.stack(columns, 1)


class Reference:
    """``Reference(model, layer_rule)(x, R)`` -> input relevance (shaped like ``x``)."""

    def __init__(self, model: nn.Module, layer_rule: LayerRule, maxpool: str = "wta",
                 stabilizer: float = 1e-6) -> None:
        self.gm = fx.symbolic_trace(model)
        self.modules = dict(self.gm.named_modules())
        self.layer_rule, self.maxpool, self.eps = layer_rule, maxpool, stabilizer
        self.memo: dict[fx.Node, bool] = {}

    # -- forward: every node's value -------------------------------------------------------------
    def run(self, x: torch.Tensor) -> dict[fx.Node, Any]:
        env: dict[fx.Node, Any] = {}

        class Recorder(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                value = super().run_node(n)  # a snapshot: later in-place ops must not change it
                env[n] = value.clone() if isinstance(value, torch.Tensor) else value
                return value

        with torch.no_grad():
            Recorder(self.gm).run(x)
        return env

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules[node.target] if node.op == "call_module" else None

    def folded_bn(self, node: fx.Node) -> fx.Node | None:
        """The BatchNorm right after a conv/linear node (its only user), if any."""
        users = list(node.users)
        if len(users) == 1 and isinstance(self.module(users[0]),
                                          nn.modules.batchnorm._BatchNorm):
            return users[0]
        return None

    # -- backward ---------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        env = self.run(x)
        nodes = list(self.gm.graph.nodes)
        output = nodes[-1].args[0]
        layers = [n for n in nodes if isinstance(self.module(n), LINEAR_MODULES)]
        rel: dict[fx.Node, Any] = {output: relevance}
        for node in reversed(nodes):
            if node not in rel or node.op in ("placeholder", "output"):
                continue
            r = rel[node]
            if isinstance(r, dict):  # pieces of a tuple-valued node
                pieces = [r.get(i, torch.zeros_like(v)) for i, v in enumerate(env[node])]
                r = torch.cat([p.reshape(-1) for p in pieces])
            for source, value in self.backward(node, r, env, layers):
                self.accumulate(rel, source, value)
        placeholder = nodes[0]
        return rel.get(placeholder, torch.zeros_like(x))

    @staticmethod
    def accumulate(rel: dict, source: fx.Node, value: Any) -> None:
        if isinstance(value, tuple):  # (index, relevance) of a tuple piece
            rel.setdefault(source, {})
            index, value = value
            pieces = rel[source]
            pieces[index] = pieces[index] + value if index in pieces else value
            return
        rel[source] = rel[source] + value if source in rel else value

    def slots(self, node: fx.Node) -> list[fx.Node]:
        """The node arguments of ``node`` in order of appearance (repeats kept)."""
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
        return found

    def call_with(self, node: fx.Node, env: dict, k: int, t: torch.Tensor) -> Any:
        """Re-run ``node`` with its ``k``-th node argument replaced by ``t``."""
        counter = iter(range(10**9))
        args, kwargs = fx.node.map_arg(
            (node.args, node.kwargs), lambda n: t if next(counter) == k else env[n])
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return OUT_OF_PLACE.get(node.target, node.target)(*args, **kwargs)

    def tensor_slots(self, node: fx.Node, env: dict) -> list[int]:
        return [k for k, n in enumerate(self.slots(node))
                if isinstance(env[n], torch.Tensor) and env[n].is_floating_point()
                and self.from_input(n)]

    def from_input(self, node: fx.Node) -> bool:
        if node not in self.memo:
            self.memo[node] = node.op == "placeholder" or any(
                self.from_input(a) for a in node.all_input_nodes)
        return self.memo[node]

    def backward(self, node: fx.Node, r: torch.Tensor, env: dict, layers: list) -> list:
        module, target = self.module(node), node.target
        slots, tensors = self.slots(node), self.tensor_slots(node, env)
        if target is operator.getitem and isinstance(env[slots[0]], (tuple, list)):
            return [(slots[0], (node.args[1], r))]  # a piece of a tuple: kept by index
        if node.op in ("get_attr",) or not tensors:
            return []
        if isinstance(module, LINEAR_MODULES):
            kind = "dense" if isinstance(module, nn.Linear) else "conv"
            return [(slots[0], self.layer(node, r, env, self.layer_rule(layers.index(node), kind)))]
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and node.args[0] in layers \
                and self.folded_bn(node.args[0]) is node:
            return [(slots[0], r)]  # folded: the conv before it explains the pair
        if isinstance(module, nn.LayerNorm) or target is F.layer_norm:
            return [(slots[0], self.layer_norm(node, r, env))]
        if isinstance(module, PASS_MODULES) or target in PASS_FUNCTIONS or target in PASS_METHODS:
            return [(slots[0], r.reshape(env[slots[0]].shape))]
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) and self.maxpool == "wta":
            return self.route(node, r, env, tensors)
        if isinstance(module, NORM_MODULES) or target in NORM_FUNCTIONS or target in NORM_METHODS:
            return self.norm(node, r, env, tensors)
        if target in MUL:
            return self.product(node, r, env, tensors)
        return self.route(node, r, env, tensors)  # routing: cat, getitem, views, chunk...

    # -- rules in dense form ----------------------------------------------------------------------
    def layer(self, node: fx.Node, r: torch.Tensor, env: dict, spec: tuple) -> torch.Tensor:
        x = env[node.args[0]]
        bn = self.folded_bn(node)
        conv = self.modules[node.target]

        def f(t: torch.Tensor) -> torch.Tensor:
            y = conv(t)
            return self.modules[bn.target](y) if bn is not None else y

        zero = torch.zeros_like(x)
        with torch.no_grad():
            b = f(zero).reshape(-1)
        W = linear_jacobian(f, zero)
        xv, R = x.reshape(-1), r.reshape(-1)
        name, *params = spec
        if name == "epsilon":
            out = dense.epsilon(W, b, xv, R, *params)
        elif name == "zplus":
            out = dense.zplus(W, b, xv, R, *params)
        elif name == "alphabeta":
            out = dense.alpha_beta(W, b, xv, R, *params)
        elif name == "gamma":
            out = dense.gamma(W, b, xv, R, *params)
        elif name == "flat":
            out = dense.flat((W != 0).to(W), R, *params)
        elif name == "zbox":
            low, high = (torch.full_like(x, v).reshape(-1) for v in params[:2])
            out = dense.zbox(W, b, xv, R, low, high, *params[2:])
        else:
            raise ValueError(name)
        return out.reshape(x.shape)

    def norm(self, node: fx.Node, r: torch.Tensor, env: dict, tensors: list[int]) -> list:
        slots, z = self.slots(node), env[node]
        s = r.reshape(-1) / dense.stab(z.reshape(-1), self.eps)
        out = []
        for k in tensors:
            a = env[slots[k]]
            J = linear_jacobian(lambda t, k=k: self.call_with(node, env, k, t), a)
            out.append((slots[k], (a.reshape(-1) * (J.T @ s)).reshape(a.shape)))
        return out

    def route(self, node: fx.Node, r: torch.Tensor, env: dict, tensors: list[int]) -> list:
        slots, out = self.slots(node), []
        for k in tensors:
            a = env[slots[k]]

            def f(t: torch.Tensor, k: int = k) -> torch.Tensor:
                y = self.call_with(node, env, k, t)
                return torch.cat([p.reshape(-1) for p in y]) if isinstance(y, tuple) else y

            pool = isinstance(self.module(node), (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))
            J = (jacobian if pool else linear_jacobian)(f, a)
            out.append((slots[k], (J.T @ r.reshape(-1)).reshape(a.shape)))
        return out

    def is_gate(self, node: fx.Node) -> bool:
        while node.target in VIEWS or isinstance(self.module(node), nn.Flatten):
            node = node.args[0]
        return isinstance(self.module(node), GATE_MODULES) or node.target in GATE_FUNCTIONS \
            or node.target == "sigmoid"

    def product(self, node: fx.Node, r: torch.Tensor, env: dict, tensors: list[int]) -> list:
        slots = self.slots(node)
        if len(tensors) == 2:
            gates = [self.is_gate(slots[k]) for k in tensors]
            assert gates.count(True) == 1, "the reference knows gate × signal products only"
            tensors = [tensors[gates.index(False)]]
        k = tensors[0]
        a = env[slots[k]]
        E = linear_jacobian(lambda t: torch.broadcast_to(t, env[node].shape), a)  # broadcast
        return [(slots[k], (E.T @ r.reshape(-1)).reshape(a.shape))]

    def layer_norm(self, node: fx.Node, r: torch.Tensor, env: dict) -> torch.Tensor:
        x = env[node.args[0]]
        module = self.module(node)
        if module is not None:
            shape, weight, bias, eps = (module.normalized_shape, module.weight, module.bias,
                                        module.eps)
        else:
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[n])
            bound = inspect.signature(F.layer_norm).bind(*args, **kwargs)
            bound.apply_defaults()
            _, shape, weight, bias, eps = bound.arguments.values()
        dims = tuple(range(-len(shape), 0))
        sigma = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)  # held constant

        def f(t: torch.Tensor) -> torch.Tensor:
            y = (t - t.mean(dims, keepdim=True)) / sigma
            y = y * weight if weight is not None else y
            return y + bias if bias is not None else y

        zero = torch.zeros_like(x)
        with torch.no_grad():
            b = f(zero).reshape(-1)
        W = linear_jacobian(f, zero)
        return dense.epsilon(W, b, x.reshape(-1), r.reshape(-1), self.eps).reshape(x.shape)


def preset(name: str, low: float = -3.0, high: float = 3.0, epsilon: float = 1e-6) -> LayerRule:
    """The layer rules of the lrpfx/Zennit presets as ``layer_rule(position, kind)``."""
    def rule(position: int, kind: str) -> tuple:
        if kind == "dense" and not (position == 0 and name == "epsilon-plus-flat"):
            return ("epsilon", epsilon)
        if name == "epsilon":
            return ("epsilon", epsilon)
        if name == "epsilon-plus-flat":
            return ("flat",) if position == 0 else ("zplus",)
        if name == "epsilon-gamma-box":
            return ("zbox", low, high) if position == 0 else ("gamma", 0.25)
        if name == "epsilon-plus":
            return ("zplus",)
        raise ValueError(name)
    return rule
