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
