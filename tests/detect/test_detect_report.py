"""The scan report section: which classes are drawn for large models, and what the page says."""

import torch

from poisonguard.detect.report import MAX_DRAWN, classes_to_draw, detection_html
from poisonguard.results import Detection


def _detection(k: int, flagged: tuple[int, ...], sizes: list[float]) -> Detection:
    return Detection(method="neural_cleanse", backdoored=bool(flagged), flagged_classes=flagged,
                     anomaly_index=tuple(0.0 for _ in range(k)), seconds=1.0, mask_l1=tuple(sizes), threshold=2.0,
                     extra={"targets": list(range(k))}, masks=torch.rand(k, 6, 6), patterns=torch.rand(k, 1, 6, 6))


def test_small_models_draw_every_class_in_order():
    det = _detection(10, (3,), [float(10 - i) for i in range(10)])
    assert classes_to_draw(det) == list(range(10))


def test_large_models_draw_flagged_classes_first_then_smallest_triggers():
    # 30 classes, flagged class 27 lies beyond the first 20; sizes decrease with the class id.
    det = _detection(30, (27,), [float(100 - i) for i in range(30)])
    drawn = classes_to_draw(det)
    assert len(drawn) == MAX_DRAWN
    assert drawn[0] == 27
    assert drawn[1:4] == [29, 28, 26]  # then the smallest masks
    html = detection_html(det, None)
    assert f"{MAX_DRAWN} of 30 classes are drawn" in html and "<img" in html
