"""The main job: train a small CNN on the scikit-learn digits, compile it, explain it.

Prints the annotated graph and the generated relevance program, and writes a PNG grid: two
samples of each digit in the first row, then one row of heatmaps per composite (red: evidence for
the predicted class, blue: against).

    python examples/digits.py [--out out/digits.png] [--epochs 30]
    lrpfx demo [--out out/digits.png] [--epochs 30]         # the same, from any install

The digits come with scikit-learn (``pip install "lrpfx[demo]"``). The data, the network and the
training loop are shared with the PatternNet and occlusion examples.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.syntax import Syntax
from torch import nn

import lrpfx
from lrpfx import composites
from lrpfx.heatmap import colorize, heatmap, save_png


def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 8×8 digits as ``(N, 1, 8, 8)`` floats in [0, 1] and their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError('the digits demo loads its data with scikit-learn: '
                          'pip install "lrpfx[demo]" (or scikit-learn)') from None
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(digits.target)


def digits_cnn() -> nn.Sequential:
    """Three convolutions (two with BatchNorm, folded when compiled), a max-pool, two dense."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    """Adam on 80 % of the data; returns the accuracy on the other 20 %."""
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=generator)
    split = int(0.8 * len(x))
    train_idx, test_idx = order[:split], order[split:]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for batch in train_idx[torch.randperm(split, generator=generator)].split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()


def trained(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, console: Console,
            what: str = "") -> float:
    """``train``, timed, with one line saying so (``what``: the model, "a ViT "); returns the
    test accuracy."""
    start = time.perf_counter()
    accuracy = train(model, x, y, epochs)
    console.print(f"trained {what}on the digits in {time.perf_counter() - start:.1f} s: "
                  f"test accuracy {accuracy:.1%}")
    return accuracy


# the rows of the picture: composites to compare (pixels lie in [0, 1] for zB)
COMPOSITES = {
    "epsilon-plus": composites.EpsilonPlus(),
    "epsilon-alpha2-beta1": composites.EpsilonAlpha2Beta1(),
    "epsilon-gamma-box": composites.EpsilonGammaBox(low=0.0, high=1.0),
}


def picture(x: torch.Tensor, relevances: list[torch.Tensor]) -> torch.Tensor:
    """Digits (gray) in the first row, one row of heatmaps per relevance, upsampled to 64 px."""
    digits = colorize(x[:, 0], "gray").movedim(0, 1)
    digits = nn.functional.interpolate(digits, size=(64, 64), mode="nearest")
    return torch.cat([digits, *(heatmap(r, "bwr", size=64) for r in relevances)])


def explain_rows(explainers: dict[str, lrpfx.Explainer], x: torch.Tensor,
                 console: Console) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Each explainer's relevance for ``x``, and the mean of relevance sum / logit per
    explainer, printed with its range (1 where a rule conserves relevance)."""
    relevances, ratios = [], {}
    width = max(map(len, explainers))
    for name, explainer in explainers.items():
        out = explainer(x)
        logit = out.output.gather(1, out.output.argmax(1, keepdim=True))[:, 0]
        ratio = out.relevance.sum((1, 2, 3)) / logit
        console.print(f"{name:>{width}}: relevance sum / logit = {ratio.mean():6.3f} "
                      f"(min {ratio.min():6.3f}, max {ratio.max():6.3f})")
        relevances.append(out.relevance)
        ratios[name] = float(ratio.mean())
    return relevances, ratios


def main(argv: list[str] | None = None) -> None:
    """Run the demo with command-line style arguments (``--out``, ``--epochs``)."""
    parser = argparse.ArgumentParser(prog="lrpfx demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/digits.png"))
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    console = Console()
    torch.manual_seed(0)

    x, y = digits_data()
    model = digits_cnn()
    trained(model, x, y, args.epochs, console)

    explainers = {name: lrpfx.compile(model, c) for name, c in COMPOSITES.items()}
    first = explainers["epsilon-plus"]
    lrpfx.show(first, console)
    console.print(Syntax(first.code, "python", line_numbers=False, word_wrap=True))

    samples = torch.cat([torch.nonzero(y == d)[:2, 0] for d in range(10)])
    relevances, _ = explain_rows(explainers, x[samples], console)
    predicted = first(x[samples]).output.argmax(1)
    console.print(f"labels    {y[samples].tolist()}\npredicted {predicted.tolist()}")
    path = save_png(picture(x[samples], relevances), args.out, nrow=len(samples))
    console.print(f"wrote {path}: digits, then rows {', '.join(COMPOSITES)}")


if __name__ == "__main__":
    main()
