"""How an evaluation is shown and kept: a rich table sorted by the headline, JSON with the
protocol, the summaries and every curve, a long CSV of the curves, and a PNG of the mean
curves."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from lrpfx.evaluation.plot import Series, curves_png

if TYPE_CHECKING:
    from lrpfx.evaluation.evaluate import Evaluation


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
