"""Trigger reconstruction: one batched inversion engine, one file per method.

`DETECTORS` maps names to detector classes; each has `.detect(model, data) -> Detection`:

    from poisonguard.detect import DETECTORS
    det = DETECTORS.get("neural-cleanse")(seed=0).detect(model, clean_data)
"""

from __future__ import annotations

from poisonguard.registry import Registry

DETECTORS: Registry[type] = Registry("detection method")

from poisonguard.detect import contrast, deepinspect, feature_re, neural_cleanse, tabor  # noqa: E402,F401  (register methods)

__all__ = ["DETECTORS"]
