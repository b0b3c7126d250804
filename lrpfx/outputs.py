"""Models whose output is a dict, tuple or list of tensors (torchvision segmentation models
return ``{"out": ..., "aux": ...}``).

The output is a *structure*: a tensor, or a dict / tuple / list of structures. Its *leaves* are
its tensors in a fixed order: dict entries in the dict's order, sequence items in theirs
(``leaves``). The explain program seeds each leaf with its own relevance
(``seed_leaves``): the seed of a structured output is a structure of the same form, which
``lrpfx.targets.Select`` builds (the chosen element gets the inner seed, every other one
zero relevance); a dict / tuple / list of tensors, or a callable returning one, is used as it
is.

Before the program runs, ``parts`` says which output elements a seed applies to, so that the
explainer's argument checks (``lrpfx.guard``) check each one as they check a one-tensor output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from lrpfx.targets import Select, Target

Path = tuple[Any, ...]  # keys and indices from the output to one of its tensors
Shapes = Any  # a torch.Size, or a dict / tuple / list of them: the form of a model output

# the seeds that explain one tensor: on a structured output they need a Select around them
_TENSOR_SEEDS = ("logit", "one_hot", "Contrast", "Region", "Unit")


def is_structured(value: Any) -> bool:
    """Whether ``value`` is a dict / tuple / list of outputs (a torch.Size is a shape)."""
    return isinstance(value, Mapping) or (isinstance(value, tuple | list)
                                          and not isinstance(value, torch.Size))


def _children(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, Mapping):
        return list(value.items())
    return list(enumerate(value))


def leaves(value: Any, path: Path = ()) -> list[tuple[Path, Any]]:
    """``(path, leaf)`` for every leaf of ``value`` (see the module docstring), in order."""
    if not is_structured(value):
        return [(path, value)]
    return [item for key, child in _children(value) for item in leaves(child, path + (key,))]


def at(value: Any, path: Path) -> Any:
    """The element of ``value`` at ``path``."""
    for key in path:
        value = value[key]
    return value


def spell(path: Path) -> str:
    """``output['out'][0]``: how a path reads in a message."""
    return "output" + "".join(f"[{key!r}]" for key in path)


def shapes(value: Any, path: Path = ()) -> Shapes:
    """The shape of every tensor of an output, in its form; refuses any other leaf."""
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, Mapping):
        return {key: shapes(child, path + (key,)) for key, child in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(shapes(child, path + (i,)) for i, child in enumerate(value))
    raise ValueError(f"the model output has {type(value).__name__} at {spell(path)}; lrpfx "
                     "explains outputs made of tensors (one, or a dict / tuple / list of them)")


def describe(value: Shapes) -> str:
    """A short description of an output's form: ``dict {'out': (2, 21, 64, 64), ...}``."""
    if not is_structured(value):
        return f"shape {tuple(value)}"
    items = ", ".join(f"{key!r}: {tuple(s) if not is_structured(s) else describe(s)}"
                      for key, s in _children(value))
    return f"{type(value).__name__} {{{items}}}" if isinstance(value, Mapping) else \
        f"{type(value).__name__} ({items})"


def select(value: Shapes, key: Any) -> Shapes:
    """The element ``key`` of a structured output's shapes, or a ``ValueError`` listing the
    keys there are."""
    if not is_structured(value):
        raise ValueError(f"Select({key!r}) picks an element of a dict / tuple / list output, "
                         f"but the model returns one tensor ({describe(value)}); drop the "
                         "Select")
    if isinstance(value, Mapping):
        if key not in value:
            raise ValueError(f"Select({key!r}): the model output is a dict without that key; "
                             f"its keys are {list(value)}")
        return value[key]
    if isinstance(key, bool) or not isinstance(key, int) or not -len(value) <= key < len(value):
        raise ValueError(f"Select({key!r}): the model output is a {type(value).__name__} of "
                         f"{len(value)} elements; give an index from 0 to {len(value) - 1}")
    return value[key]


def parts(relevance: Any, value: Shapes) -> list[tuple[Any, Shapes | None]]:
    """What each part of ``relevance`` is checked against: ``(seed, shape)`` pairs, the seed
    being None (the target logit), a tensor or a callable, the shape that of the output element
    it applies to (None: unknown, for a callable of a whole structured output).

    ``Select`` is followed down to the element it picks; a dict / tuple / list of tensors is
    split into its leaves. Raises ``ValueError`` when a structured output gets no seed, or a
    seed made for one tensor.
    """
    if isinstance(relevance, Select):
        return parts(relevance.inner, select(value, relevance.key))
    if not is_structured(value):
        return [(relevance, value)]
    name = getattr(relevance, "__name__", type(relevance).__name__)
    if relevance is None or name in _TENSOR_SEEDS:
        first = _children(value)[0][0]
        what = "the target logit" if relevance is None else name
        raise ValueError(
            f"the model returns a {describe(value)}: say which element {what} is taken in, "
            f"e.g. output_relevance=lrpfx.targets.Select({first!r}"
            f"{'' if relevance is None else ', ...'}) (the other elements get zero relevance)")
    if callable(relevance) and not isinstance(relevance, torch.Tensor):
        return [(relevance, None)]
    if not is_structured(relevance):
        raise TypeError(f"output_relevance for the model's {describe(value)} must be a Select, "
                        "a callable, or a structure of tensors of the same form, got "
                        f"{type(relevance).__name__}")
    return [(_element(relevance, path), shape) for path, shape in leaves(value)]


def _element(relevance: Any, path: Path) -> Any:
    try:
        return at(relevance, path)
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"output_relevance has no tensor for {spell(path)}; give one per "
                         "output tensor (zeros where nothing is explained)") from None


# -- inside the program ----------------------------------------------------------------------------
def seed_leaves(output: Any, target: Target, relevance: Any,
                check: Callable[[Any, torch.Tensor, str], torch.Tensor]
                ) -> tuple[torch.Tensor, ...]:
    """The relevance of each leaf of a structured ``output``, in ``leaves`` order: the
    structure ``relevance`` (or ``relevance(output, target)``) split up, each part passed
    through ``check(part, leaf, where)`` (shape, dtype, finite)."""
    if relevance is None:
        raise ValueError(f"the model returns a {describe(shapes(output))}: pass "
                         "output_relevance=lrpfx.targets.Select(key) to say which element to "
                         "explain")
    if callable(relevance) and not isinstance(relevance, torch.Tensor):
        relevance = relevance(output, target)
    return tuple(check(_element(relevance, path), leaf, f"for {spell(path)}")
                 for path, leaf in leaves(output))

