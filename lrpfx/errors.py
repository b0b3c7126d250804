"""Exceptions raised by lrpfx. Every message names the node, the op and the fix."""

from __future__ import annotations


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
