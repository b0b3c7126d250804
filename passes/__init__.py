"""Graph passes of lrpfx, each a function ``GraphModule -> GraphModule`` in its own file."""

from lrpfx.passes.annotate import annotate
from lrpfx.passes.check import check
from lrpfx.passes.facts import facts
from lrpfx.passes.fold_batchnorm import fold_batchnorm
from lrpfx.passes.fold_constants import fold_constants
from lrpfx.passes.fuse import fuse
from lrpfx.passes.maxpool import maxpool
from lrpfx.passes.normalize import normalize

__all__ = ["annotate", "check", "facts", "fold_batchnorm", "fold_constants", "fuse",
           "maxpool", "normalize"]
