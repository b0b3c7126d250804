"""Evaluation built in: perturbation faithfulness, the randomization sanity check, a
ground-truth benchmark and a rule tuner (``lrpfx.evaluate``, ``lrpfx evaluate``, ``lrpfx tune``).
"""

from lrpfx.evaluation.evaluate import evaluate
from lrpfx.evaluation.results import Evaluation, MethodResult, Protocol

__all__ = ["Evaluation", "MethodResult", "Protocol", "evaluate"]
