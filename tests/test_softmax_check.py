"""The output softmax check: every spelling of softmax / log-softmax at the output is refused
with an error that names it and the fix, or stripped with ``strip_softmax=True``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.errors import ModelCheckError


class Head(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(4 * 4 * 4, 5))
        self.module = {"nn.Softmax": nn.Softmax(dim=1), "nn.LogSoftmax": nn.LogSoftmax(dim=1)
                       }.get(how, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(x)
        return {
            "F.softmax": lambda: F.softmax(z, dim=1),
            "torch.softmax": lambda: torch.softmax(z, 1),
            "method": lambda: z.softmax(1),
            "F.log_softmax": lambda: F.log_softmax(z, dim=1),
            "log_softmax method": lambda: z.log_softmax(dim=1),
        }.get(self.how, lambda: self.module(z))()


SPELLINGS = ["nn.Softmax", "nn.LogSoftmax", "F.softmax", "torch.softmax", "method",
             "F.log_softmax", "log_softmax method"]


@pytest.mark.parametrize("how", SPELLINGS)
def test_output_softmax_is_refused_or_stripped(how):
    model = Head(how).eval()
    x = torch.randn(3, 1, 6, 6)
    kind = "log-softmax" if "log" in how.lower() else "softmax"
    with pytest.raises(ModelCheckError, match=f"output is a {kind}.*explains logits.*"
                                              "strip_softmax=True"):
        lrpfx.compile(model)
    stripped = lrpfx.compile(model, strip_softmax=True)
    logits = lrpfx.compile(model.body)
    out, reference = stripped(x), logits(x)
    with torch.no_grad():
        torch.testing.assert_close(out.output, model.body(x))
    torch.testing.assert_close(out.relevance, reference.relevance)
    assert "softmax" not in stripped.code
    assert "output" in repr(stripped) and f"{kind} stripped" in repr(stripped)


def test_the_error_names_the_module():
    with pytest.raises(ModelCheckError, match=r"nn.Softmax, module 'module'"):
        lrpfx.compile(Head("nn.Softmax").eval())
    assert issubclass(ModelCheckError, lrpfx.LrpfxError)


def test_other_outputs_are_not_flagged():
    sigmoid = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid()).eval()
    lrpfx.compile(sigmoid)  # a sigmoid output is a per-class score: allowed
    lrpfx.compile(Head("logits").eval())
