"""lrpfx: Layer-wise Relevance Propagation for PyTorch as a torch.fx graph compiler.

>>> import lrpfx
>>> explainer = lrpfx.compile(model, "epsilon-plus-flat")
>>> out = explainer(x, target=3)          # out.output, out.relevance
>>> print(explainer.code)                 # the generated relevance program
"""

from lrpfx import composites, evaluation, filters, heatmap, patterns, quantus, rules, targets
from lrpfx.compiler import compile
from lrpfx.errors import (
    ExampleInputsNeededError,
    LrpfxError,
    ModelCheckError,
    TraceError,
    UnsupportedOperationError,
)
from lrpfx.evaluation import evaluate
from lrpfx.explainer import Explainer, Explanation
from lrpfx.ops import register
from lrpfx.show import show

__all__ = [
    "Explainer",
    "Explanation",
    "LrpfxError",
    "ModelCheckError",
    "TraceError",
    "UnsupportedOperationError",
    "ExampleInputsNeededError",
    "compile",
    "composites",
    "evaluate",
    "evaluation",
    "filters",
    "heatmap",
    "patterns",
    "quantus",
    "register",
    "rules",
    "show",
    "targets",
]
