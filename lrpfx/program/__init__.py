"""Passes over the generated explain program (not the model's graph): same values, less memory
and time. ``PROGRAM_PASSES`` runs in ``compile`` after ``codegen.generate``, in this order."""

from lrpfx.program.inplace import inplace
from lrpfx.program.layout import channels_last

PROGRAM_PASSES = (inplace, channels_last)

__all__ = ["PROGRAM_PASSES", "channels_last", "inplace"]
