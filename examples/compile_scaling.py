"""How compile time grows with the length of the graph: chains of N residual blocks.

Each block is ``x + relu(Linear(x))`` (plain) or ``x + h * sigmoid(h)`` with ``h = Linear(x)``
(gated, a gate and a residual per block), so a chain of N blocks has N residual adds and 4N to
6N nodes. ``lrpfx.compile`` is timed ``--repeat`` times per N (after one small warm-up
compile; the fastest run counts, as the one least disturbed by the machine), and the ratio
``t(2N) / t(N)`` says how it grows: 2 is linear, 4 quadratic. A chain of ``--deep`` blocks is
compiled and explained once more, as a check that nothing recurses with the depth of the graph
(and that relevance is conserved through all of it).

    python examples/compile_scaling.py                         # N = 250, 500, 1000, 2000; 5000
    python examples/compile_scaling.py --blocks 100 200 --deep 0
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import lrpfx
from lrpfx import composites


class Block(nn.Module):
    """One residual block: ``x + relu(W x + b)``, or gated ``x + h * sigmoid(h)``."""

    def __init__(self, width: int, gated: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.gated = gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return x + (h * torch.sigmoid(h) if self.gated else torch.relu(h))


def chain(blocks: int, gated: bool, width: int = 8) -> nn.Module:
    """``blocks`` residual blocks and a head of 3 classes, in eval mode, without biases (so the
    relevance sums to the logit) and with block weights that shrink with the depth (so the
    residual stream stays of order 1 at any depth)."""
    torch.manual_seed(0)
    model = nn.Sequential(*[Block(width, gated) for _ in range(blocks)], nn.Linear(width, 3))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=1.0 / blocks if module is not model[-1] else 1.0)
            nn.init.zeros_(module.bias)
    return model.eval()


def compile_time(model: nn.Module, repeat: int = 1) -> tuple[float, lrpfx.Explainer]:
    """The fastest of ``repeat`` compiles of ``model``, and the explainer."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        explainer = lrpfx.compile(model, "epsilon")
        best = min(best, time.perf_counter() - start)
    return best, explainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--repeat", type=int, default=3, help="compiles per N (the fastest counts)")
    parser.add_argument("--deep", type=int, default=5000,
                        help="blocks of the deep check (0: skip it)")
    args = parser.parse_args(argv)
    console = Console()
    compile_time(chain(10, gated=True))  # warm-up: imports, first fx code generation
    table = Table(title=f"lrpfx.compile time by chain length (fastest of {args.repeat})")
    for column in ("blocks", "nodes", "plain s", "plain t(2N)/t(N)", "gated s",
                   "gated t(2N)/t(N)"):
        table.add_column(column, justify="right")
    previous: dict[bool, tuple[int, float]] = {}
    for n in args.blocks:
        row = [str(n), ""]
        for gated in (False, True):
            seconds, explainer = compile_time(chain(n, gated), args.repeat)
            row[1] = str(len(explainer.graph_module.graph.nodes))
            last = previous.get(gated)
            ratio = f"{seconds / last[1]:.2f}" if last and n == 2 * last[0] else ""
            row += [f"{seconds:.2f}", ratio]
            previous[gated] = (n, seconds)
        table.add_row(*row)
        console.print(f"  {n} blocks done", style="dim")
    console.print(table)
    if args.deep:  # LRP-0 (ε = 1e-12 everywhere) in float64: Σ R is the logit
        model = chain(args.deep, gated=False).double()
        start = time.perf_counter()
        explainer = lrpfx.compile(model, composites.EpsilonOnly(1e-12, stabilizer=1e-12))
        seconds = time.perf_counter() - start
        out = explainer(torch.randn(2, 8, dtype=torch.float64), target=0)
        logit = out.output[:, 0]
        error = float(((out.relevance.sum(1) - logit) / logit).abs().max())
        console.print(f"{args.deep} residual adds ({len(explainer.graph_module.graph.nodes)} "
                      f"nodes): compiled in {seconds:.1f} s and explained; relative error of "
                      f"Σ R against the logit: {error:.1e}")

if __name__ == "__main__":
    main()
