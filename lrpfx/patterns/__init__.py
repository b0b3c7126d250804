"""Signal patterns for PatternNet and PatternAttribution, fitted from data.

Kindermans, Schütt, Alber, Müller, Erhan, Kim, Dähne: "Learning how to explain neural networks:
PatternNet and PatternAttribution", ICLR 2018 (arXiv:1705.05598).

A linear unit ``y = wᵀx + b`` sees ``x = s + d``: a signal ``s = a y`` along the *pattern* ``a``
and a distractor ``d`` that the weights cancel (``wᵀd = 0``). The weights say how to filter the
distractor out, not where the signal lies; the pattern is estimated from data, per output unit
(§4 of the paper), normalized so that ``wᵀa = 1`` (the signal ``a y`` reproduces the output)::

    "linear"    S_a     a  = cov[x, y] / wᵀcov[x, y]                    (wᵀcov[x, y] = var y)
    "positive"  S_a+-   a₊ = cov₊[x, y] / wᵀcov₊[x, y]                  (wᵀcov₊[x, y] = var₊ y)
                        cov₊[x, y] = E₊[xy] − E₊[x] E₊[y]               center="regime" (default)
                                   = E₊[xy] − E₊[x] E[y]                center="all" (as printed)

``E₊`` averages over the samples where the unit is active, ``y > 0`` (``y`` the layer output
with its bias: the pre-activation of the ReLU after it), ``E`` over all samples.

Which formula: the paper prints ``a₊ = (E₊[xy] − E₊[x]E[y]) / (wᵀE₊[xy] − wᵀE₊[x]E[y])``
(§4, two-component estimator), centered on the overall mean ``E[y]``; iNNvestigate
(``ReLUPositivePattern``) and TorchLRP (``fit_patternnet_positive``, with ``y ≥ 0``) compute
exactly that; it is ``center="all"`` here. Its derivation takes ``y = wᵀx`` without a bias, where
the denominator ``E₊[y²] − E₊[y]E[y]`` is ≥ 0. With a bias ``b`` the printed denominator is
``E₊[y'y] − E₊[y']E[y]`` with ``y' = y − b``, which can vanish or turn negative; on the trained
digits CNN (BatchNorm folded into the convs) it does, down to −0.23 in the second conv, whose
patterns then reach 219 (its linear ones: 0.36 at most), and PatternNet outputs grow by 10⁶.
The default ``center="regime"`` conditions every statistic on the regime, as the lrpfx issue
states the positive variant ("conditions on y > 0, uses only the positive regime"): the
covariance of ``x`` and ``y`` among the active samples, whose normalization is the variance
``var₊ y ≥ 0``. Both give ``wᵀa₊ = 1`` and agree for a unit active on every sample.
Units that are never active, or whose denominator is exactly zero, get a zero pattern (as the
references' safe division does).

Every conv and dense node of the canonical graph (``compile``'s own passes, so BatchNorms are
folded and keys agree with the nodes ``compile`` explains) gets a pattern shaped like its weight.
For a convolution each output position is a sample whose input is the patch under the kernel
(zero padding included). Nothing is unfolded: ``sum over samples of g_o · patch`` is the weight
gradient of the layer for the output gradient ``g``, one ``vjp`` of the layer's own call.

The statistics stream, merged exactly across batches in float64, is ``lrpfx.patterns.moments``;
the ``Patterns`` value (tensors, persistence, ``check``) is ``lrpfx.patterns.store``; ``fit`` is
``lrpfx.patterns.fit``.
"""

from lrpfx.errors import PatternError
from lrpfx.patterns.fit import fit
from lrpfx.patterns.store import PatternKind, Patterns

__all__ = ["PatternError", "PatternKind", "Patterns", "fit"]
