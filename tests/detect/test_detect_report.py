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


def test_a_scan_of_some_classes_labels_and_marks_rows_by_their_class():
    # Rows are classes 7, 2, 5 (a scan over a subset); class 5, the third row, is flagged.
    det = Detection(method="neural_cleanse", backdoored=True, flagged_classes=(5,), anomaly_index=(0.1, 0.2, 3.0),
                    seconds=1.0, mask_l1=(50.0, 40.0, 4.0), threshold=2.0, extra={"targets": [7, 2, 5]},
                    masks=torch.rand(3, 6, 6), patterns=torch.rand(3, 1, 6, 6))
    names = [f"digit{c}" for c in range(10)]
    html = detection_html(det, None, names)
    rows = html[html.index("<table"):html.index("</table>")]
    assert rows.index("digit7") < rows.index("digit2") < rows.index("digit5")
    assert rows.count("flagged") == 1 and rows.index("flagged") > rows.index("digit5")


def test_a_largest_index_on_a_route_every_model_takes_says_so():
    # A table scan named class 0 the "largest index" while the section below called it a route
    # every model takes (its trigger moves the clean references too), not backdoor evidence.
    from poisonguard.detect.report import method_sentence

    det = Detection(method="reference_contrast", backdoored=False, flagged_classes=(), anomaly_index=(1.0, 0.4),
                    seconds=1.0, mask_l1=(18.0, 5.7), threshold=4.9,
                    extra={"targets": [0, 1], "followed_by_references": [True, False]})
    text = method_sentence(det, None, ["no", "yes"])
    assert "(largest index 1.00, class 0 ('no'), whose trigger also moves the clean reference models" in text
    det = Detection(method="reference_contrast", backdoored=False, flagged_classes=(), anomaly_index=(0.2, 0.4),
                    seconds=1.0, mask_l1=(18.0, 5.7), threshold=4.9,
                    extra={"targets": [0, 1], "followed_by_references": [True, False]})
    assert "moves the clean reference" not in method_sentence(det, None, ["no", "yes"])


def test_every_class_flagged_is_not_called_smaller_than_the_others():
    from poisonguard.detect.report import method_sentence, verdict_sentence

    det = Detection(method="neural_cleanse", backdoored=True, flagged_classes=(0, 1, 2), anomaly_index=(3.0, 2.5, 4.0),
                    seconds=1.0, mask_l1=(5.0, 6.0, 4.0), threshold=2.0, extra={"targets": [0, 1, 2]})
    for text in (method_sentence(det, None), verdict_sentence(det)):
        assert "flags every class" in text and "smaller than" not in text, text
    two = Detection(method="neural_cleanse", backdoored=True, flagged_classes=(0, 2), anomaly_index=(3.0, 0.5, 4.0),
                    seconds=1.0, mask_l1=(5.0, 60.0, 4.0), threshold=2.0, extra={"targets": [0, 1, 2]})
    assert method_sentence(two, None).endswith("turns inputs into them.")


def test_a_stand_in_verdicts_section_says_what_its_one_number_is():
    # With stand-in references each class has several tests (verdict.stand_in_rows: Neural Cleanse
    # three); the chart, the table and the sentence read the one number they share, the largest of
    # each test's index over its threshold.
    from poisonguard.detect.calibration import Calibration, fit_null
    from poisonguard.detect.report import chart_values, method_sentence
    from poisonguard.detect.verdict import judge

    gen = torch.Generator().manual_seed(0)
    effect = torch.tensor([4.0, 5.3, 3.8, 3.9, 4.5, 4.0, 4.3, 4.5, 4.3, 4.7], dtype=torch.float64)
    refs = (effect + 0.15 * torch.randn(4, 10, generator=gen, dtype=torch.float64)).exp()
    sizes = [60.0, 62.0, 58.0, 61.0, 5.0, 59.0, 63.0, 60.0, 57.0, 64.0]  # class 4: a planted target
    det = _detection(10, (), sizes)
    cal = Calibration(key="k", architecture="mnist_cnn", source="a stand-in", n_models=4, clean_images=200,
                      seconds=1.0, methods={"neural_cleanse": fit_null(refs.tolist())}, stand_in=True)
    verdict = judge([det], calibration=cal)
    rows = verdict.method_rows("neural_cleanse")
    values, threshold, flagged, label = chart_values(det, rows)
    assert verdict.targets == (4,) and flagged == {4} and threshold == 1.0 and "over its threshold" in label
    tests = ("against_references", "own_sizes", "smallest_gap")
    ratio = max(rows[4][t]["index"] / rows[4][t]["threshold"] for t in tests)
    assert abs(values[4] - ratio) < 1e-4  # the row's figures are rounded to 6 digits
    assert f"class 4 (index over its threshold {values[4]:.2f})" in method_sentence(det, rows)
    html = detection_html(det, None, None, rows)
    assert "index over its threshold" in html and "each class is tested 3 ways, each at 1/3 of the rate" in html
    assert "by how far its smallest trigger is below the next" in html
    assert len(label) < 30  # the chart's axis holds it (the long words sit under the chart)
    from poisonguard.detect.report import verdict_section_html

    assert f"{values[4]:.2f} over its threshold (4)" in verdict_section_html(verdict)
    from poisonguard.detect.report import detection_record

    record = detection_record(det, verdict)
    assert "over its own threshold" in record["anomaly_index_is"] and record["anomaly_index"][4] == values[4]
    assert all(record["tests"][t]["index"][4] == rows[4][t]["index"] for t in tests)
    assert "Neural Cleanse is also judged on its own trigger sizes" in verdict.sentence
    assert "each of its 3 tests at a third of the rate" in verdict.sentence
