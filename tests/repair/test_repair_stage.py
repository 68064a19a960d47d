"""The `repair` stage: with a scan that flags the model it unlearns the scan's trigger."""

from __future__ import annotations

import torch

from poisonguard.report import Report
from poisonguard.results import Detection
from poisonguard.stages import StageContext, load_stages


def test_checklist_stage_unlearns_the_scanned_trigger(mnist, badnets_model, badnets_trigger_3x3, tmp_path):
    assert "repair" in [s.name for s in load_stages()]
    from poisonguard.repair.stage import repair_stage

    masks = torch.zeros(10, 28, 28)
    patterns = torch.zeros(10, 1, 28, 28)
    masks[0], patterns[0] = badnets_trigger_3x3.mask, badnets_trigger_3x3.pattern
    scan = Detection(method="neural_cleanse", backdoored=True, flagged_classes=(0,), anomaly_index=(3.0,) + (0.0,) * 9,
                     seconds=1.0, masks=masks, patterns=patterns)
    report = Report("checklist")
    ctx = StageContext(command="checklist", model=badnets_model, splits=mnist, report=report, out_dir=tmp_path,
                       arch="mnist_cnn", trigger=badnets_trigger_3x3, quick=True, shared={"scan": scan}, device="cpu")
    repair_stage(ctx)
    entry = report.data["repairs"][0]
    assert entry["method"] == "unlearn" and entry["extra"]["trigger_source"] == "scan"
    assert entry["after"]["attack_success_rate"] < 0.1 < entry["before"]["attack_success_rate"]
    assert (tmp_path / "repaired" / "model.pt").is_file()
    assert any(s.title == "Backdoor removal" and s.summary for s in report.sections)


def test_a_repair_no_better_than_the_largest_class_says_so_in_the_report():
    # The warning went only to stderr: report.html said "still classifies 67.8% correctly" of a
    # table whose largest class is 68.0%.
    import torch

    from poisonguard.data.dataset import ImageData
    from poisonguard.repair.report import repair_section
    from poisonguard.results import Evaluation, Repair

    class Splits:
        kind = "tabular"
        test = ImageData(torch.zeros(100, 3), torch.tensor([0] * 68 + [1] * 32), ("no", "yes"), kind="tabular")

    def repaired(after: float) -> Repair:
        return Repair("retrain", 1.0, Evaluation(0.72, 0.98), Evaluation(after, 0.0),
                      extra={"attack_success_rate_trigger": "real"})

    _, _, summary = repair_section([repaired(0.678)], splits=Splits())
    assert "no better than always answering the largest class (68.0%)" in summary and "no model to use" in summary
    _, _, summary = repair_section([repaired(0.70)], splits=Splits())
    assert "largest class" not in summary


def test_unlearnings_filter_mode_says_it_left_the_model_and_what_its_filter_does():
    # It read as a failed repair ("fools the model on 95.1% (before: 95.1%)") and never named the filter.
    from poisonguard.repair.report import repair_summary
    from poisonguard.results import Evaluation, Repair

    extra = {"attack_success_rate_trigger": "real", "mode": "filter", "filter_neurons": [10, 3],
             "filter_detection_rate_reconstructed": 0.67, "filter_detection_rate_real_trigger": 0.36,
             "filter_false_positive_rate_clean": 0.05}
    text = repair_summary([Repair("unlearn", 1.0, Evaluation(0.86, 0.951), Evaluation(0.86, 0.951), extra=extra)])
    assert "leaves the model's weights unchanged" in text and "2 penultimate neurons" in text
    assert "67.0% of inputs carrying the reconstructed trigger and 36.0% carrying the real one" in text
    assert "at 5.0% of clean inputs" in text
