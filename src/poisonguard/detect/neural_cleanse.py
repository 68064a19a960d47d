"""Neural Cleanse (Wang et al., 2019, "Neural Cleanse: Identifying and Mitigating Backdoor
Attacks in Neural Networks", IEEE S&P).

For every class, reverse-engineer the smallest mask-and-pattern trigger that sends clean
images to it (the batched engine); a backdoor's target needs a far smaller mask than the
other classes, so the mask L1 norms are tested for a small outlier with the MAD anomaly
index (flagged above 2).
"""

from __future__ import annotations

import time

from torch import nn

from poisonguard.data import ImageData
from poisonguard.detect import DETECTORS
from poisonguard.detect.anomaly import THRESHOLD, flag_small, mad_anomaly_index
from poisonguard.detect.base import check_finite, check_inputs, check_number, device_for, make_detection
from poisonguard.detect.engine import InversionConfig, frozen_copy, invert_triggers
from poisonguard.results import Detection


@DETECTORS.register("neural_cleanse")
class NeuralCleanse:
    """Neural Cleanse trigger reconstruction and MAD outlier test.

    Keyword-only hyperparameters: those of `InversionConfig` (epochs, batch_size, lr, init_cost,
    patience, ...), `threshold` (2.0, the paper's), `seed`, `device`.
    """

    name = "neural_cleanse"
    needs_data = True
    # Methods of one family share an engine, so their findings are not independent evidence:
    # the verdict takes their best (Bonferroni) before Fisher combines families (combine.py).
    family = "pixel_mask"
    kinds = ("image", "tabular")  # the engine searches tables inside each feature's range

    def __init__(self, *, threshold: float = THRESHOLD, seed: int = 0, device: str = "auto", **inversion) -> None:
        check_number("threshold", threshold, low=0)
        check_number("seed", seed, integer=True)
        self.threshold = float(threshold)
        self.seed = int(seed)
        self.device = device
        self.config = InversionConfig(**inversion)

    def extra_loss(self):
        """No extra terms: plain NC objective."""
        return None

    def detect(self, model: nn.Module, data: ImageData | None, *, targets: list[int] | None = None) -> Detection:
        """Scan `model` with clean `data` (N, C, H, W); return the Detection with masks (K, H, W)."""
        start = time.perf_counter()
        shape, num_classes = check_inputs(model, data, needs_data=self.needs_data, name=self.name)
        device = device_for(self.device)
        frozen = frozen_copy(model, device, shape)
        from poisonguard.data import input_bounds

        bounds = input_bounds(data) if data.kind == "tabular" else None
        inv = invert_triggers(frozen, data.x, data.y, targets=targets, num_classes=num_classes, config=self.config,
                              extra_loss=self.extra_loss(), seed=self.seed, device=device, bounds=bounds)
        check_finite(self.name, inv.masks, inv.patterns)
        return self.verdict(frozen, data, inv, num_classes, start)

    def verdict(self, model, data, inv, num_classes: int, start: float) -> Detection:
        sizes = inv.mask_l1
        index = mad_anomaly_index(sizes)
        flagged = [inv.targets[i] for i in flag_small(sizes, index, self.threshold)]
        return make_detection(
            self.name, index=index, flagged=flagged, start=start, sizes=sizes, masks=inv.masks, patterns=inv.patterns,
            threshold=self.threshold,
            extra={"targets": list(inv.targets), "attack_success": inv.attack_success.tolist(),
                   "found": inv.found.tolist(), "epochs": inv.epochs.tolist(), "pruned": inv.pruned.tolist(),
                   "statistic": "mask L1 norm", "chunk_classes": inv.extra["chunk_classes"]},
        )
