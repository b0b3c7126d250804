"""The result of an evaluation and how it is shown and kept: the protocol, one row per method
with its per-sample values and curves, a rich table sorted by the headline, Markdown, JSON with
the protocol, the summaries and every curve, a long CSV of the curves, and a PNG of the mean
curves."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from lrpfx.evaluation.plot import Series, curves_png
from lrpfx.evaluation.stats import Interval, Paired, auc, bootstrap


@dataclass(frozen=True)
class Protocol:
    """Everything that changes the numbers (written next to them)."""

    patch: int
    patches: int
    steps: int
    imputer: str
    score: str
    target: str
    n: int
    faithfulness_runs: int
    faithfulness_size: int
    seed: int
    model: str
    model_hash: str
    lrpfx_version: str
    input_shape: tuple[int, ...]


@dataclass
class MethodResult:
    """One row: per-sample values (tensors of length N) and the curves ``(N, S + 1)`` by score,
    normalised by the unperturbed score."""

    name: str
    reference: bool
    morf: dict[str, torch.Tensor]
    lerf: dict[str, torch.Tensor]
    faithfulness: torch.Tensor
    conservation: torch.Tensor | None
    negative: torch.Tensor
    ms: float
    score: str = "logit"
    interval: Interval = field(init=False)

    def __post_init__(self) -> None:
        self.interval = bootstrap(self.abpc)

    @property
    def morf_auc(self) -> torch.Tensor:
        return auc(self.morf[self.score])

    @property
    def lerf_auc(self) -> torch.Tensor:
        return auc(self.lerf[self.score])

    @property
    def abpc(self) -> torch.Tensor:
        """Area between the perturbation curves, LeRF − MoRF (SRG): higher is better."""
        return self.lerf_auc - self.morf_auc

    def summary(self) -> dict[str, Any]:
        """The row's means (JSON-ready)."""
        mean = lambda t: None if t is None else float(t.nanmean())  # noqa: E731
        return {"name": self.name, "reference": self.reference,
                "abpc": self.interval.mean, "abpc_low": self.interval.low,
                "abpc_high": self.interval.high, "morf_auc": mean(self.morf_auc),
                "lerf_auc": mean(self.lerf_auc), "faithfulness_correlation": mean(
                    self.faithfulness), "conservation_error": mean(self.conservation),
                "negative_fraction": mean(self.negative), "ms_per_explanation": self.ms}


@dataclass
class Evaluation:
    """The result of :func:`evaluate`: the protocol, the rows sorted by the headline (ABPC,
    best first) and the paired test between the first two (None with fewer than two rows)."""

    protocol: Protocol
    rows: list[MethodResult]
    paired: Paired | None

    def table(self) -> Table:
        """The rich table (:func:`table`)."""
        return table(self)

    def markdown(self) -> str:
        """The table as Markdown (:func:`markdown`)."""
        return markdown(self)

    def save(self, folder: str | Path, stem: str = "evaluation") -> list[Path]:
        """Write ``stem.json``, ``stem.csv`` and ``stem.png`` (the curves) into ``folder``."""
        return save(self, folder, stem)

    def protocol_dict(self) -> dict[str, Any]:
        return asdict(self.protocol)



def title(evaluation: Evaluation) -> str:
    """The protocol in one line."""
    p = evaluation.protocol
    return (f"lrpfx evaluate · {p.model} ({p.model_hash}) · {p.n} samples · patches "
            f"{p.patch}×{p.patch} ({p.patches}) · {p.steps} steps · imputer={p.imputer} · "
            f"score={p.score} · target={p.target} · seed={p.seed}")


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or value != value else f"{value:.{digits}f}"


def table(evaluation: Evaluation) -> Table:
    """The rows, best headline first; the paired test's verdict is the caption."""
    grid = Table(title=title(evaluation), caption=evaluation.paired.verdict()
                 if evaluation.paired else None, title_justify="left")
    for header in ("method", "ABPC↑ (95% CI)", "MoRF↓", "LeRF↑", "FaithCorr↑", "cons.err",
                   "neg.frac", "ms/expl"):
        grid.add_column(header, justify="left" if header == "method" else "right")
    for row in evaluation.rows:
        s = row.summary()
        name = f"[dim]{row.name}[/]" if row.reference else row.name
        grid.add_row(name, f"{s['abpc']:.3f} ({s['abpc_low']:.3f}–{s['abpc_high']:.3f})",
                     _number(s["morf_auc"]), _number(s["lerf_auc"]),
                     _number(s["faithfulness_correlation"]),
                     "—" if s["conservation_error"] is None else f"{s['conservation_error']:.1e}",
                     _number(s["negative_fraction"], 2), f"{row.ms:.3f}")
    return grid


def markdown(evaluation: Evaluation) -> str:
    """The table as Markdown (for a README or an issue)."""
    lines = [f"`{title(evaluation)}`", "",
             "| method | ABPC ↑ (95% CI) | MoRF ↓ | LeRF ↑ | FaithCorr ↑ | cons. err | neg. frac"
             " | ms/expl |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in evaluation.rows:
        s = row.summary()
        cons = "—" if s["conservation_error"] is None else f"{s['conservation_error']:.1e}"
        lines.append(f"| {row.name} | {s['abpc']:.3f} ({s['abpc_low']:.3f}–{s['abpc_high']:.3f})"
                     f" | {_number(s['morf_auc'])} | {_number(s['lerf_auc'])} | "
                     f"{_number(s['faithfulness_correlation'])} | {cons} | "
                     f"{_number(s['negative_fraction'], 2)} | {row.ms:.3f} |")
    if evaluation.paired:
        lines += ["", evaluation.paired.verdict()]
    return "\n".join(lines)


def to_json(evaluation: Evaluation) -> dict[str, Any]:
    """Protocol, summaries, the paired test and every curve (per sample, normalised)."""
    paired = evaluation.paired
    return {
        "protocol": evaluation.protocol_dict(),
        "summary": [row.summary() for row in evaluation.rows],
        "paired_test": None if paired is None else {
            "a": paired.a, "b": paired.b, "mean_difference": paired.difference.mean,
            "low": paired.difference.low, "high": paired.difference.high, "p": paired.p,
            "verdict": paired.verdict()},
        "curves": {row.name: {f"{order}_{score}": curves[score].tolist()
                              for order, curves in (("morf", row.morf), ("lerf", row.lerf))
                              for score in curves} for row in evaluation.rows},
    }


def write_csv(evaluation: Evaluation, path: Path) -> None:
    """One line per method, order, score, sample and step (the fraction of patches removed)."""
    steps = evaluation.protocol.steps
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "order", "score", "sample", "step", "fraction", "value"])
        for row in evaluation.rows:
            for order, curves in (("morf", row.morf), ("lerf", row.lerf)):
                for score, values in curves.items():
                    for sample, curve in enumerate(values.tolist()):
                        for step, value in enumerate(curve):
                            writer.writerow([row.name, order, score, sample, step,
                                             f"{step / steps:.6g}", f"{value:.8g}"])


def save(evaluation: Evaluation, folder: str | Path, stem: str = "evaluation") -> list[Path]:
    """Write JSON, CSV and PNG into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.{suffix}" for suffix in ("json", "csv", "png")]
    paths[0].write_text(json.dumps(to_json(evaluation), indent=1, ensure_ascii=False))
    write_csv(evaluation, paths[1])
    score = evaluation.protocol.score
    series = [Series(row.name, row.morf[score].nanmean(0).tolist(),
                     row.lerf[score].nanmean(0).tolist(), row.interval.mean)
              for row in evaluation.rows]
    curves_png(series, paths[2], f"normalised target {score}", title(evaluation))
    return paths
