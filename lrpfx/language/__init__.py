"""Language models: targets for sequences (``lrpfx.language.targets``)."""

from lrpfx.language.targets import NextToken, last_positions

__all__ = ["NextToken", "last_positions"]
