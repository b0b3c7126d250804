"""A ground-truth benchmark: the class evidence is at a known place. The scikit-learn digits
(8×8) are pasted at random positions into larger canvases of noise; a small CNN trained in
seconds classifies them; a good explanation puts its relevance inside the pasted box.

Metrics (Arras et al. 2022, CLEVR-XAI): *relevance mass accuracy*, the share of the positive
relevance inside the box, and *relevance rank accuracy*, the share of the K most relevant pixels
inside it (K = the box's pixel count)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rich.table import Table
from torch import nn

from lrpfx.evaluation.methods import RuleSpec, make_methods
from lrpfx.evaluation.stats import Interval, bootstrap


@dataclass(frozen=True)
class Canvases:
    """Images ``(N, 1, S, S)``, labels ``(N,)``, masks ``(N, 1, S, S)`` of the box, and which
    samples are held out from training."""

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    test: torch.Tensor


def canvases(size: int = 16, noise: float = 0.3, copies: int = 2, seed: int = 0) -> Canvases:
    """Every digit ``copies`` times at a random place in a ``size × size`` canvas of uniform
    noise in ``[0, noise]``; the digits of a held-out 20 % form the test samples."""
    from lrpfx.demo import digits_data

    digits, labels = digits_data()
    generator = torch.Generator().manual_seed(seed)
    held_out = torch.zeros(len(digits), dtype=torch.bool)
    held_out[torch.randperm(len(digits), generator=generator)[: len(digits) // 5]] = True
    digits, labels, held_out = (t.repeat_interleave(copies, 0) for t in (digits, labels, held_out))
    n = len(digits)
    x = torch.rand(n, 1, size, size, generator=generator) * noise
    mask = torch.zeros(n, 1, size, size, dtype=torch.bool)
    rows = torch.randint(0, size - 7, (n,), generator=generator)
    cols = torch.randint(0, size - 7, (n,), generator=generator)
    for k in range(n):
        r, c = int(rows[k]), int(cols[k])
        x[k, :, r : r + 8, c : c + 8] = digits[k]
        mask[k, :, r : r + 8, c : c + 8] = True
    return Canvases(x, labels, mask, held_out)


def canvas_cnn(size: int = 16) -> nn.Sequential:
    """Two convolutions, each followed by a max-pool, two dense layers."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32 * (size // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, 10))


def train_canvas_cnn(data: Canvases, epochs: int = 8, seed: int = 0) -> tuple[nn.Module, float]:
    """Adam on the training canvases; returns the model (eval mode) and the test accuracy."""
    torch.manual_seed(seed)
    model = canvas_cnn(data.x.shape[-1]).to(data.x.dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train = torch.nonzero(~data.test)[:, 0]
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in train[torch.randperm(len(train), generator=generator)].split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(data.x[batch]), data.y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(data.x[data.test]).argmax(1) == data.y[data.test]).double().mean()
    return model, float(accuracy)


def mass_accuracy(relevance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of the positive relevance (channels summed) inside ``mask``, per sample."""
    r = relevance.sum(1).flatten(1).clamp(min=0)
    inside = (r * mask[:, 0].flatten(1)).sum(1)
    return inside / r.sum(1).clamp(min=1e-30)


def rank_accuracy(relevance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of the K most relevant pixels inside ``mask``, K = the mask's size, per sample."""
    r = relevance.sum(1).flatten(1)
    m = mask[:, 0].flatten(1)
    hits = [m[k, r[k].topk(int(m[k].sum())).indices].double().mean() for k in range(len(r))]
    return torch.stack(hits)


@dataclass(frozen=True)
class GroundTruth:
    """Per method: relevance mass accuracy and rank accuracy with bootstrap intervals."""

    accuracy: float
    n: int
    size: int
    rows: list[tuple[str, Interval, Interval]]

    def table(self) -> Table:
        grid = Table(title=self.title(), title_justify="left")
        for header in ("method", "mass accuracy↑ (95% CI)", "rank accuracy↑ (95% CI)"):
            grid.add_column(header, justify="left" if header == "method" else "right")
        for name, mass, rank in self.rows:
            grid.add_row(name, f"{mass.mean:.3f} ({mass.low:.3f}–{mass.high:.3f})",
                         f"{rank.mean:.3f} ({rank.low:.3f}–{rank.high:.3f})")
        return grid

    def title(self) -> str:
        return (f"ground truth: digits (8×8) at random places in {self.size}×{self.size} noise "
                f"canvases, CNN test accuracy {self.accuracy:.1%}, {self.n} held-out samples; "
                f"a random attribution scores the box's share, {64 / self.size**2:.2f}")

    def markdown(self) -> str:
        lines = [f"`{self.title()}`", "",
                 "| method | mass accuracy ↑ (95% CI) | rank accuracy ↑ (95% CI) |",
                 "|---|---:|---:|"]
        lines += [f"| {name} | {m.mean:.3f} ({m.low:.3f}–{m.high:.3f}) | "
                  f"{r.mean:.3f} ({r.low:.3f}–{r.high:.3f}) |" for name, m, r in self.rows]
        return "\n".join(lines)


def benchmark(rules: str | Sequence[RuleSpec] = "all", n: int = 300, epochs: int = 8,
              seed: int = 0) -> GroundTruth:
    """Train the canvas CNN and score every method on ``n`` held-out canvases (explaining the
    true class), sorted by mass accuracy."""
    data = canvases(seed=seed)
    model, accuracy = train_canvas_cnn(data, epochs, seed)
    index = torch.nonzero(data.test)[:n, 0]
    x, y, mask = data.x[index], data.y[index], data.mask[index]
    rows = []
    for method in make_methods(model, rules, (0.0, 1.0), True, seed):
        relevance = method.explain(x, y).detach()
        rows.append((method.name, bootstrap(mass_accuracy(relevance, mask)),
                     bootstrap(rank_accuracy(relevance, mask))))
    rows.sort(key=lambda row: -row[1].mean)
    return GroundTruth(accuracy, len(index), data.x.shape[-1], rows)
