"""The probe record every SWOLA probe produces (its own module: the MLP path and the probe engine both use it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Probe:
    """One task's probe.

    Attributes:
        deltas: (trunks, n, m) float32. ``kind="delta"`` (the MLP): backpropagated errors at
            each linear layer's output, layers concatenated (m = sum of hidden widths);
            ``kind="grad"``: exact per-sample trunk gradients (m = P); ``kind="sketch"``: their
            Cauchy sketches (m = k). Zero rows for unlabelled samples.
        labelled: (n,) bool, which probe samples carry this task's label.
        kind: ``delta``, ``grad`` or ``sketch`` (above).
        norms: (trunks, n) exact per-sample gradient L1 norms (``grad`` and ``sketch``), else None.
    """

    deltas: np.ndarray
    labelled: np.ndarray
    kind: str = "delta"
    norms: np.ndarray | None = None
