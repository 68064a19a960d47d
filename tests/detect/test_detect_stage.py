"""The `scan` stage of demo/checklist: both detectors report, and a flagged one is shared with repair."""

from __future__ import annotations

from poisonguard.report import Report
from poisonguard.stages import StageContext, load_stages


def test_scan_stage_runs_nc_and_deepinspect_and_shares_the_flagging_one(mnist, badnets_model, badnets_trigger_3x3,
                                                                       tmp_path):
    assert "scan" in [s.name for s in load_stages()]
    from poisonguard.detect.stage import scan_stage

    report = Report("checklist")
    ctx = StageContext(command="checklist", model=badnets_model, splits=mnist, report=report, out_dir=tmp_path,
                       arch="mnist_cnn", trigger=badnets_trigger_3x3, quick=True, shared={}, device="cpu")
    scan_stage(ctx)
    methods = [d["method"] for d in report.data["detections"]]
    assert methods == ["neural_cleanse", "deepinspect"]
    assert all(d["extra"]["true_target"] == 0 for d in report.data["detections"])
    shared = ctx.shared["scan"]
    # On this fixture NC's index stays under 2 (known gap) while DeepInspect flags the target:
    # the stage must hand repair a detection that flagged something whenever one did.
    assert report.data["detections"][1]["flagged_classes"][:1] == [0]
    assert shared.backdoored and shared.flagged_classes[0] == 0
    assert (tmp_path / "trigger_0.npz").is_file() and ctx.shared["scan_triggers"]


def test_scan_stage_keeps_nc_when_deepinspect_cannot_run(mnist, badnets_model, tmp_path, monkeypatch):
    from poisonguard.detect import stage
    from poisonguard.errors import UserError

    def refuse(self, *args, **kwargs):
        raise UserError("deepinspect: cannot invert this model")

    monkeypatch.setattr(stage.DeepInspect, "detect", refuse)
    report = Report("checklist")
    ctx = StageContext(command="checklist", model=badnets_model, splits=mnist, report=report, out_dir=tmp_path,
                       arch="mnist_cnn", trigger=None, quick=True, shared={}, device="cpu")
    stage.scan_stage(ctx)
    assert [d["method"] for d in report.data["detections"]] == ["neural_cleanse"]
    assert ctx.shared["scan"].method == "neural_cleanse"
