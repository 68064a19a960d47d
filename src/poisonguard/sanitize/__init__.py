"""Data sanitisation: which training samples are poisoned, and a cleansed copy.

`SANITIZERS` maps names to method classes (one file each); every method scores every
training sample (`Method.score(inputs) -> (N,)`, higher = more suspicious):

    spectral  Tran, Li & Madry, NeurIPS 2018     spectral signatures
    spectre   Hayase et al., ICML 2021           robust whitening + QUE scores
    scan      Tang et al., USENIX Security 2021  two-component decomposition per class
    abl       Li et al., NeurIPS 2021            ABL's isolation: fastest learnt under a loss floor
    strip     Gao et al., ACSAC 2019             entropy under superimposition (also an input filter)

`Sanitizer(...).run(data)` trains a small model (or takes one), scores, and combines the
methods into one verdict calibrated to a stated false-positive rate (`calibrate.py`).
Activation clustering (Chen et al., 2018) is deliberately absent: it is patented (US 11188789 B2).
"""

from __future__ import annotations

from poisonguard.sanitize.base import SANITIZERS, Method, ScoringInputs
from poisonguard.sanitize import abl, scan, spectral, spectre, strip  # noqa: E402,F401  (register methods)
from poisonguard.sanitize.run import DEFAULT_METHODS, Sanitizer, check_data  # noqa: E402
from poisonguard.sanitize.strip import StripFilter  # noqa: E402

__all__ = ["DEFAULT_METHODS", "Method", "SANITIZERS", "Sanitizer", "ScoringInputs", "StripFilter", "check_data"]
