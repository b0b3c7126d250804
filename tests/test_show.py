"""``lrpfx.show`` and ``print(explainer)``: what the table says, at 80 columns and as HTML."""

from __future__ import annotations

import torch
from rich.console import Console
from torch import nn

import lrpfx
from lrpfx import composites, filters, rules
from lrpfx.show import describe_rule, summary


def model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4), nn.Softmax(dim=1),
    ).eval()


def render(explainer: lrpfx.Explainer, width: int = 80, **options: object) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    lrpfx.show(explainer, console, **options)  # type: ignore[arg-type]
    return console.export_text()


def test_the_table_has_rules_shapes_and_canonization_notes_within_80_columns():
    low, high = torch.full((1, 3, 1, 1), -2.0), torch.full((1, 3, 1, 1), 2.5)
    composite = composites.EpsilonGammaBox(low=low, high=high, rules={
        "8": filters.TopK(rules.Epsilon(0.25, scale="std"), 10)})
    explainer = lrpfx.compile(model(), composite, strip_softmax=True)
    text = render(explainer, example=torch.zeros(2, 3, 16, 16))
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80
    body = lines[next(i for i, line in enumerate(lines) if "───" in line) + 1 :]
    rows = {line.split()[0]: line for line in body if line.strip() and not line.startswith("   ")}
    assert list(rows) == ["input_1", "0", "2", "3", "4", "5", "6", "7", "8"]  # BN 1 folded
    assert "input" in rows["input_1"] and "3×16×16" in rows["input_1"]
    assert "Conv2d" in rows["0"] and "ZBox(-2…2.5)" in rows["0"] and "8×16×16" in rows["0"]
    assert "folded BN 1" in rows["0"]
    assert "MaxPool2d" in rows["3"] and "as avg-pool" in rows["3"] and "8×8×8" in rows["3"]
    assert "Gamma(γ=0.25)" in rows["4"] and "≥0" in rows["5"]
    flat = "".join(line[27:48].strip() for line in body)  # the rule column, unfolded
    assert "TopK(10%,Epsilon(ε=0.25·std))" in flat
    assert "output softmax" in rows["8"] and "softmax stripped" in lines[1]
    assert "shape" in render(explainer).splitlines()[3]  # shapes, once known, stay known
    fresh = lrpfx.compile(model(), composite, strip_softmax=True)
    assert "shape" not in render(fresh).splitlines()[3]  # unknown: no shape column


def test_wide_consoles_and_notebooks():
    explainer = lrpfx.compile(model(), "epsilon-plus-flat", maxpool="wta", strip_softmax=True)
    wide = render(explainer, width=160)
    assert "winner-takes-all" in wide and "Flat()" in wide and "ZPlus()" in wide
    console = Console(record=True, width=100, file=open("/dev/null", "w"))  # noqa: SIM115
    lrpfx.show(explainer, console)
    html = console.export_html()  # what a notebook renders
    assert "<table" in html or "<pre" in html
    assert "ZPlus()" in html


def test_print_gives_a_one_line_summary_and_code_stays_the_program():
    explainer = lrpfx.compile(model(), "epsilon-plus", strip_softmax=True, record=["4"])
    text = repr(explainer)
    assert text == summary(explainer) == str(explainer)
    assert "\n" not in text and len(text) < 200
    assert text.startswith("Explainer(Sequential, 'epsilon-plus', ")
    for part in ("2 conv", "1 dense", "1 maxpool", "1 avgpool", "1 BatchNorm folded",
                 "maxpool='avg'", "output softmax stripped", "records 1 layers"):
        assert part in text, part
    assert "def forward(self, input_1, target = None, output_relevance = None):" in explainer.code
    assert explainer.code == explainer.program.code


def test_rules_are_described_with_their_parameters():
    assert describe_rule(rules.Epsilon()) == "Epsilon(ε=1e-06)"
    assert describe_rule(rules.Epsilon(0.25, scale="std")) == "Epsilon(ε=0.25·std)"
    assert describe_rule(rules.Epsilon(0.1, ignore_bias=True)) == "Epsilon(ε=0.1, no bias)"
    assert describe_rule(rules.AlphaBeta()) == "AlphaBeta(α=2, β=1)"
    assert describe_rule(rules.ZPlus(stabilizer=1e-3)) == "ZPlus(stab=0.001)"
    assert describe_rule(rules.ZBox(torch.tensor([-1.0, -3.0]), 4.0)) == "ZBox(-3…4)"
    assert describe_rule(filters.TopK(rules.Gamma(0.1), 5)) == "TopK(5%, Gamma(γ=0.1))"
    assert describe_rule(None) == ""
