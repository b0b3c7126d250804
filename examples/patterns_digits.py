"""PatternNet and PatternAttribution next to LRP on the scikit-learn digits.

Trains the small CNN of the digits demo (``lrpfx.demo``), fits the signal patterns of every
conv and dense layer ("linear" and "positive", Kindermans et al. 2018) in one streaming pass
over the digits, and writes one PNG: two samples of each digit in the first row, then one row
per method (red: for the predicted class, blue: against; PatternNet shows the estimated signal,
same colors).

    python examples/patterns_digits.py [--out out/patterns_digits.png] [--epochs 30]
                                       [--center regime|all] [--max-batches N]

``--center all`` fits the positive patterns with the paper's printed formula (centered on the
overall mean output; see ``lrpfx.patterns``): on this network, whose convolutions carry the
folded BatchNorm biases, its denominators cross zero and PatternNet blows up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from torch.utils.data import DataLoader, TensorDataset

import lrpfx
from lrpfx import composites
from lrpfx.demo import digits_cnn, digits_data, explain_rows, picture, train
from lrpfx.heatmap import save_png


def explainers(model: torch.nn.Module, loader: DataLoader, center: str,
               max_batches: int | None, console: Console) -> dict:
    """LRP, then PatternNet and PatternAttribution for both kinds of patterns."""
    rows = {"LRP epsilon-plus": lrpfx.compile(model, "epsilon-plus")}
    for kind in ("linear", "positive"):
        start = time.perf_counter()
        patterns = lrpfx.patterns.fit(model, loader, kind, max_batches, center=center)
        console.print(f"fitted in {time.perf_counter() - start:.1f} s: {patterns.summary()}")
        for preset in (composites.PatternNet, composites.PatternAttribution):
            # the paper follows the gradient through max-pools: maxpool="wta"
            rows[f"{preset.__name__} {kind}"] = lrpfx.compile(model, preset(patterns),
                                                             maxpool="wta")
    return rows


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Returns the mean sum of input relevance / logit of each row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/patterns_digits.png"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--center", choices=("regime", "all"), default="regime")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="fit the patterns on the first N batches of 128 digits only")
    args = parser.parse_args(argv)
    console = Console()
    torch.manual_seed(0)

    x, y = digits_data()
    model = digits_cnn()
    accuracy = train(model, x, y, args.epochs)
    console.print(f"trained the digits CNN: test accuracy {accuracy:.1%}")

    # patterns are statistics of the inputs alone (labels unused): one pass over all digits
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    rows = explainers(model, loader, args.center, args.max_batches, console)

    samples = torch.cat([torch.nonzero(y == d)[:2, 0] for d in range(10)])
    relevances, ratios = explain_rows(rows, x[samples], console)
    path = save_png(picture(x[samples], relevances), args.out, nrow=len(samples))
    console.print(f"wrote {path}: digits, then rows {', '.join(rows)}")
    return ratios


if __name__ == "__main__":
    main()
