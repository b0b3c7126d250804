"""Passes over the generated explain program (not the model's graph): same values, less memory
and time. ``PROGRAM_PASSES`` runs in ``compile`` after ``codegen.generate``, in this order."""

from lrpfx.program.inplace import inplace
from lrpfx.program.layout import channels_last
from lrpfx.program.recompute import recompute
from lrpfx.program.shapes import shapes

PROGRAM_PASSES = (shapes, recompute, inplace, channels_last)

__all__ = ["PROGRAM_PASSES", "channels_last", "inplace", "recompute", "shapes"]
