"""Exceptions raised by lrpfx. Every message names the node, the op and the fix."""

from __future__ import annotations

from typing import Any


class LrpfxError(Exception):
    """Base class of every error lrpfx raises on purpose."""


class TraceError(LrpfxError):
    """The model could not be traced symbolically by ``torch.fx``."""


class UnsupportedOperationError(LrpfxError):
    """Some nodes have no relevance implementation for their op or their rule.

    ``nodes`` holds one line per offending node; the message lists all of them at once.
    """

    def __init__(self, lines: list[str], hint: str) -> None:
        self.nodes = lines
        listing = "\n".join(f"  - {line}" for line in lines)
        super().__init__(f"{len(lines)} node(s) cannot be explained:\n{listing}\n{hint}")


class ExampleInputsNeededError(UnsupportedOperationError):
    """The only nodes that cannot be explained are calls of functions wrapped with
    ``torch.fx.wrap`` (Swin's ``shifted_window_attention``): compiling again with
    ``example_inputs=`` traces through them with static shapes."""


class NonFiniteError(LrpfxError, FloatingPointError):
    """An explanation came out with NaN or Inf although its inputs were finite.

    Raised instead of returning a NaN heatmap. ``node`` names the first node of the relevance
    program that produced a non-finite value (``None`` when it cannot be located), ``samples``
    the affected batch indices, and ``explanation`` holds the result anyway, for whoever wants
    to keep the finite samples.
    """

    def __init__(self, message: str, explanation: Any, node: str | None,
                 samples: list[int]) -> None:
        super().__init__(message)
        self.explanation = explanation
        self.node = node
        self.samples = samples


class ModelCheckError(LrpfxError):
    """The model has a shape LRP should not explain as it is (e.g. an output softmax)."""


class PatternError(LrpfxError):
    """Patterns cannot be fitted from the data given, or do not belong to the model compiled."""


class StaleExplainerError(LrpfxError):
    """A tensor of the program was written in place after compile (an optimizer step on the
    model, whose tensors the program shares): its derived tensors are from before."""


class RegistrationError(LrpfxError):
    """An op or a relevance row was registered twice, or a row before its op's declaration."""


class VanishedRelevanceWarning(UserWarning):
    """The input relevance of a sample is exactly zero while its output relevance is not: it
    vanished on the way (the message names the node of the program where)."""
