"""Where the user wrote it, and how messages name a node.

Every lrpfx error that points at a node names it through this module, so a node reads the same
wherever it is named: by its fx name, the spelling the user wrote (``meta.ORIGIN``: ``nn.Conv2d``,
``torch.cumsum``) and the module it came from (``meta.PATH``). Messages differ only in how much
they say, one function each:

    where(node)      conv (nn.Conv2d, module 'conv') at File "net.py", line 56, in forward: ...
    describe(node)   node conv2d_1 (nn.Conv2d, module 'features.3')
    layer(node)      'features.0' (nn.Conv2d)
    spelling(node)   nn.Softmax, module 'head'         (or: softmax, node 'softmax')

The source lines come from the frames of the user's code: ``source_line`` reads a node's
``stack_trace`` (recorded while tracing), ``user_frame`` an exception's traceback; frames inside
torch and lrpfx are skipped.
"""

from __future__ import annotations

import os
import traceback

from torch import fx

from lrpfx import meta

_LRPFX_DIR = os.path.dirname(__file__)  # the tracer's and the passes' own frames


def source_line(node: fx.Node) -> str:
    """The innermost frame of the node's stack trace outside torch: where the user wrote it."""
    frames = [t.strip() for t in (node.meta.get("stack_trace") or "").splitlines()
              if t.strip().startswith("File")]
    mine = [f for f in frames if f"{os.sep}torch{os.sep}" not in f and _LRPFX_DIR + os.sep not in f]
    return (mine or [""])[-1]


def user_frame(error: BaseException) -> str:
    """The innermost frame of ``error``'s traceback in the user's code (not torch, not lrpfx)."""
    skip = (f"{os.sep}torch{os.sep}", _LRPFX_DIR)
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not any(part in f.filename for part in skip)]
    if not frames:
        return ""
    f = frames[-1]
    return f'File "{f.filename}", line {f.lineno}, in {f.name}: {f.line}'


def _origin(node: fx.Node) -> str:
    """The spelling the user wrote, else the name of the function called."""
    return str(node.meta.get(meta.ORIGIN) or getattr(node.target, "__name__", node.target))


def _module(node: fx.Node) -> str:
    """``, module 'features.3'`` for a node that came from a module, else nothing."""
    path = node.meta.get(meta.PATH)
    return f", module {path!r}" if path else ""


def _within(node: fx.Node) -> str:
    """``, in module 'blocks.0.attn' (Attention)`` for a function called inside a submodule's
    forward (the innermost module being traced, fx's ``nn_module_stack``), else nothing."""
    stack = node.meta.get("nn_module_stack")
    if node.meta.get(meta.PATH) or not stack:
        return ""
    path, cls = list(stack.values())[-1]
    return f", in module {path!r} ({getattr(cls, '__name__', cls)})"


def where(node: fx.Node) -> str:
    """``conv (nn.Conv2d, module 'conv') at File ...``: the node, its spelling (else its target),
    its module (or the module whose forward calls it) and the user's source line, for the errors
    that list nodes."""
    origin = node.meta.get(meta.ORIGIN) or str(node.target)
    source = f" at {line}" if (line := source_line(node)) else ""
    return f"{node.name} ({origin}{_module(node)}{_within(node)}){source}"


def describe(node: fx.Node) -> str:
    """``node conv2d_1 (nn.Conv2d, module 'features.3')``: a layer node, without its line."""
    return f"node {node.name} ({_origin(node)}{_module(node)})"


def layer(node: fx.Node) -> str:
    """``'features.0' (nn.Conv2d)``: a canonical node by its module path, else its name."""
    path = node.meta.get(meta.PATH)
    return f"{path if path else node.name!r} ({_origin(node)})"


def spelling(node: fx.Node) -> str:
    """``nn.Softmax, module 'head'``: the spelling and the module, else the node's name."""
    path = node.meta.get(meta.PATH)
    origin = node.meta.get(meta.ORIGIN) or node.name
    return f"{origin}, module {path!r}" if path else f"{origin}, node {node.name!r}"
