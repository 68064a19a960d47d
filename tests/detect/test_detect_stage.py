"""The `scan` stage of demo/checklist: both detectors report, and a flagged one is shared with repair."""

from __future__ import annotations

from poisonguard.report import Report
from poisonguard.stages import StageContext, load_stages


def test_scan_stage_gives_the_right_verdict_on_both_demo_models(mnist, badnets_model, badnets_trigger_3x3,
                                                                 clean_model, tmp_path):
    assert "scan" in [s.name for s in load_stages()]
    from poisonguard.detect.stage import scan_stage

    report = Report("checklist")
    ctx = StageContext(command="checklist", model=badnets_model, splits=mnist, report=report, out_dir=tmp_path,
                       arch="mnist_cnn", trigger=badnets_trigger_3x3, quick=True, shared={}, device="cpu",
                       clean_model=clean_model)
    scan_stage(ctx)
    methods = [d["method"] for d in report.data["detections"]]
    assert methods == ["neural_cleanse", "deepinspect"]
    assert all(d["extra"]["true_target"] == 0 for d in report.data["detections"])
    assert report.data["verdict"]["backdoored"] and report.data["verdict"]["targets"][0] == 0
    shared = ctx.shared["scan"]
    assert shared.backdoored and shared.flagged_classes[0] == 0 and shared.masks is not None
    assert (tmp_path / "trigger_0.npz").is_file() and ctx.shared["scan_triggers"]
    # The demo's clean model: scanned the same way, nothing found.
    assert not report.data["clean_model_verdict"]["backdoored"], report.data["clean_model_verdict"]["targets"]
    titles = [sec.title for sec in report.sections]
    assert "Verdict: the clean comparison model" in titles


def test_scan_stage_keeps_nc_when_deepinspect_cannot_run(mnist, badnets_model, tmp_path, monkeypatch):
    from poisonguard.detect import stage
    from poisonguard.errors import UserError

    def refuse(self, *args, **kwargs):
        raise UserError("deepinspect: cannot invert this model")

    from poisonguard.detect.deepinspect import DeepInspect

    monkeypatch.setattr(DeepInspect, "detect", refuse)
    report = Report("checklist")
    ctx = StageContext(command="checklist", model=badnets_model, splits=mnist, report=report, out_dir=tmp_path,
                       arch="mnist_cnn", trigger=None, quick=True, shared={}, device="cpu")
    stage.scan_stage(ctx)
    assert [d["method"] for d in report.data["detections"]] == ["neural_cleanse"]
    assert ctx.shared["scan"].method == "neural_cleanse"
