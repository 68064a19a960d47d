"""Every report section's summary sentence against the numbers beside it (one test per section),
and the report card's handling of failed and not-applicable stages.

Sections are built from hand-made results (no training), so each claim can be checked against
known data: a sentence that read only part of its table (the federated summary once read the
last round only) fails here.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from poisonguard.report import Report, validate_report
from poisonguard.results import Detection, Evaluation, Federated, Privacy, Repair, RoundResult


def percents(text: str) -> list[float]:
    return [float(p) / 100 for p in re.findall(r"(\d+(?:\.\d+)?)%", text)]


def _section(report: Report, title_part: str):
    found = [s for s in report.sections if title_part in s.title]
    assert len(found) == 1, [s.title for s in report.sections]
    return found[0]


# ---------------------------------------------------------------- repair

def _repair(method, acc_before, acc_after, asr_before, asr_after, kind="real", by=None):
    extra = {"attack_success_rate_trigger": kind, **({"trigger_reconstructed_by": by} if by else {})}
    return Repair(method=method, seconds=1.0, before=Evaluation(acc_before, asr_before),
                  after=Evaluation(acc_after, asr_after), extra=extra)


def test_repair_sentence_names_the_best_row_and_its_trigger():
    from poisonguard.repair.report import repair_section

    results = [_repair("fine_pruning", 0.97, 0.95, 1.0, 0.19), _repair("wild", 0.97, 0.94, 1.0, 0.021),
               _repair("refit", 0.97, 0.96, 1.0, 0.36)]
    _, html, summary = repair_section(results)
    assert summary.startswith("After wild, the real trigger fools the model on 2.1% of inputs")
    assert percents(summary) == pytest.approx([0.021, 1.0, 0.94, 0.97])
    assert "<td>0.021</td>" in html and "the real trigger" in html
    _, _, summary = repair_section([_repair("unlearn", 0.97, 0.96, 0.89, 0.011, kind="reconstructed", by="scan")])
    assert "a trigger reconstructed by scan fools the model on 1.1%" in summary
    from types import SimpleNamespace

    _, html, summary = repair_section(results, splits=SimpleNamespace(kind="tabular"))
    assert "of clean rows correctly" in summary and "images" not in summary  # a table's repair spoke of images


def test_text_repair_names_the_trigger_it_measured_with():
    """The text repair's table said "real trigger" for a scan's reconstruction given by --trigger."""
    from poisonguard.attacks.text import TextTrigger
    from poisonguard.report.text import add_repair

    before, after = {"clean_accuracy": 0.9, "attack_success_rate": 0.95}, {"clean_accuracy": 0.88, "attack_success_rate": 0.04}
    info = {"pruned_units": 3, "pruned_words": 1}
    for origin, word in (("reconstructed", "reconstructed"), ("attack", "real"), (None, "given")):
        report = Report("repair")
        add_repair(report, before, after, info, unlearned=0, trigger=TextTrigger(kind="words", target=1, origin=origin))
        section = _section(report, "Repair")
        assert f"attack success rate ({word} trigger)" in section.html and f"({word} trigger)" in section.summary
        assert ("real" in section.html) == (word == "real")


# ---------------------------------------------------------------- certify

def _certification(radii, correct_mask):
    from poisonguard.certify.smoothing import summarize

    labels = [0] * len(radii)
    preds = [0 if ok else 1 for ok in correct_mask]
    return summarize(preds, radii, labels, index=list(range(len(radii))), sigma=0.25, n=1000, n0=10, alpha=0.001,
                     radii_grid=(0.0, 0.25, 0.5), seconds_per_example=0.1)


def test_certificate_sentence_matches_its_table_names_the_model_and_the_trigger_size():
    from poisonguard.attacks import badnets_trigger
    from poisonguard.certify.sections import smoothing_section, trigger_coverage
    from poisonguard.data import ImageData

    cert = _certification([0.1, 0.3, 0.6, 0.7], [True, True, True, False])
    data = ImageData(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), ("a", "b"))
    trigger = badnets_trigger((1, 8, 8), target=1, size=3)  # 9 pixels 0 -> 1: L2 norm 3
    import dataclasses

    cert = dataclasses.replace(cert, extra={**cert.extra, "trigger": trigger_coverage(cert, trigger, data)})
    report = Report("certify")
    smoothing_section(report, cert, model={"path": "suspect/model.pt"})
    section = _section(report, "randomized smoothing")
    # certified accuracy at 0.5: only the third image (0.6, correct) -> 25%; at 0: 3 of 4 right.
    assert cert.certified_accuracy["0.5"] == 0.25
    assert "suspect/model.pt" in section.summary and "suspect/model.pt" in section.html
    assert "up to 0.5 (pixels in [0, 1]) on 25% of 4 test images (75% are right with some guarantee" in section.summary
    assert cert.extra["trigger"]["l2_median"] == pytest.approx(3.0)
    assert "L2 3.00 (median), 4.3x the largest radius certified (0.70): 0 of 4 images" in section.summary
    assert "The trigger changes an image by" in section.summary  # "a image"
    one = dataclasses.replace(cert, extra={**cert.extra, "examples": 1})
    report = Report("certify")
    smoothing_section(report, one)
    assert "of 1 test image (" in _section(report, "randomized smoothing").summary  # "1 test images"
    # a table: radii in standardised units, and the trigger measured in them (scale = each feature's std)
    rows = ImageData(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), ("a", "b"), kind="tabular")
    from poisonguard.attacks.triggers import PatchTrigger

    stamp = PatchTrigger(mask=torch.tensor([1.0, 0, 0]), pattern=torch.tensor([6.0, 0, 0]), target=1)
    table_cert = dataclasses.replace(cert, extra={**cert.extra, "input_space": "standardised"})
    coverage = trigger_coverage(table_cert, stamp, rows, scale=torch.tensor([2.0, 1, 1]))
    assert coverage["l2_median"] == pytest.approx(3.0)  # 6 raw units of a feature whose std is 2
    table_cert = dataclasses.replace(table_cert, extra={**table_cert.extra, "trigger": coverage})
    report = Report("certify")
    smoothing_section(report, table_cert, model={"path": "suspect/model.pt"})
    summary = _section(report, "randomized smoothing").summary
    assert "(standardised feature units) on 25% of 4 test rows" in summary and "changes a row by L2 3.00" in summary


def test_certificate_sentence_states_the_radius_it_reads():
    from poisonguard.certify.sections import smoothing_summary

    cert = _certification([0.1, 0.3], [True, True])
    cert = type(cert)(**{**{f: getattr(cert, f) for f in cert.__dataclass_fields__},
                         "certified_accuracy": {"0.0": 1.0, "0.25": 0.5}})
    assert "up to 0.25 (pixels in [0, 1]) on 50%" in smoothing_summary(cert)


# ---------------------------------------------------------------- federated

def _run(aggregator, asrs):
    rounds = tuple(RoundResult(round=i + 1, clean_accuracy=0.9, attack_success_rate=a) for i, a in enumerate(asrs))
    return Federated(aggregator=aggregator, attack="model_replacement", rounds=rounds)


def test_federated_sentence_reads_every_round():
    from poisonguard.federated.report import federated_section

    report = Report("demo")
    # FedAvg lets the backdoor through in round 1 (0.999) and it fades by the last round (0.12).
    federated_section(report, [_run("fedavg", [0.999, 0.12]), _run("flame", [0.05, 0.04])])
    summary = _section(report, "Federated").summary
    assert summary.startswith("The backdoor got through fedavg (up to 100% attack success with fedavg)")
    assert "flame kept it at or below 50% in every round" in summary
    report = Report("demo")
    federated_section(report, [_run("flame", [0.05, 0.3])])
    assert "No backdoor reached a 50% success rate in any round (highest: 30%, flame)" in report.sections[0].summary
    # a table model that answers the majority class (the target) everywhere: "success" with no trigger effect
    rounds = tuple(RoundResult(round=i + 1, clean_accuracy=0.68, attack_success_rate=1.0,
                               extra={"untriggered_target_rate": 1.0, "trigger_effect": 0.0}) for i in range(2))
    report = Report("demo")
    federated_section(report, [Federated(aggregator="fedavg", attack="backdoor", rounds=rounds)])
    summary = report.sections[0].summary
    assert "got through" not in summary and "sends 100% of inputs to the target without the trigger" in summary
    # an early round's weak model sends half the inputs to the target, and the trigger nearly all the rest
    rounds = (RoundResult(round=1, clean_accuracy=0.25, attack_success_rate=0.976,
                          extra={"untriggered_target_rate": 0.55, "trigger_effect": 0.95}),)
    report = Report("demo")
    federated_section(report, [Federated(aggregator="fedavg", attack="backdoor", rounds=rounds)])
    assert report.sections[0].summary.startswith("The backdoor got through fedavg")
    # a model that collapsed onto the target: one row of 42 left, which the trigger moves (effect 1.0)
    rounds = (RoundResult(round=1, clean_accuracy=0.64, attack_success_rate=1.0,
                          extra={"untriggered_target_rate": 0.976, "trigger_effect": 1.0}),
              RoundResult(round=2, clean_accuracy=0.63, attack_success_rate=1.0,
                          extra={"untriggered_target_rate": 1.0, "trigger_effect": 0.0}))
    report = Report("demo")
    federated_section(report, [Federated(aggregator="fedavg", attack="model_replacement", rounds=rounds)])
    summary = report.sections[0].summary
    assert "got through" not in summary and "(clean accuracy 63%)" in summary
    # ... but a model answering a target that is NOT the test data's largest class everywhere (4
    # balanced classes at chance) was taken over by the clients: it read "no sign of a backdoor"
    rounds = tuple(RoundResult(round=i + 1, clean_accuracy=0.252, attack_success_rate=1.0,
                               extra={"untriggered_target_rate": 1.0, "trigger_effect": 0.0,
                                      "target_is_largest_class": False}) for i in range(2))
    report = Report("demo")
    federated_section(report, [Federated(aggregator="fedavg", attack="model_replacement", rounds=rounds),
                               _run("flame", [0.05, 0.04])])
    summary = report.sections[0].summary
    assert summary.startswith("The backdoor got through fedavg") and "took that model over" in summary
    assert "no sign" not in summary and "flame kept it at or below 50%" in summary


# ---------------------------------------------------------------- privacy

def test_privacy_sentence_uses_the_tables_epsilon_and_noise():
    from poisonguard.privacy.report import privacy_section

    report = Report("train")
    privacy_section(report, Privacy(epsilon=2.5, delta=1e-5, accountant="prv", noise_multiplier=1.1, max_grad_norm=1.0))
    section = _section(report, "Differential privacy")
    assert "epsilon 2.50, delta 1e-05" in section.summary and "e^2.50" in section.summary
    assert "<td>2.500</td>" in section.html
    report = Report("train")
    privacy_section(report, Privacy(epsilon=float("inf"), delta=0.0, accountant="none", noise_multiplier=0.5,
                                    max_grad_norm=2.0))
    assert "clipped to norm 2 and noised (sigma 0.5)" in report.sections[0].summary


# ---------------------------------------------------------------- evaluation

def test_evaluation_sentence_matches_its_table(mnist, badnets_model, badnets_trigger_3x3):
    from poisonguard.report.evaluation import evaluation_section

    report = Report("evaluate")
    ev = evaluation_section(report, badnets_model, mnist, badnets_trigger_3x3, title="Evaluation")
    section = _section(report, "Evaluation")
    assert percents(section.summary) == pytest.approx([round(ev.clean_accuracy, 3), round(ev.attack_success_rate, 3)],
                                                      abs=6e-4)
    assert "the real trigger makes" in section.summary and "(real trigger)" in section.html
    assert f"<td>{ev.attack_success_rate:.3f}</td>" in section.html



def test_evaluation_sentence_names_the_inputs_and_an_all_to_all_target():
    """Tables were called "test images", and an all-to-all attack's rate (each class to the next)
    was described as images going "to the target"."""
    from poisonguard.report.evaluation import evaluation_summary

    ev = Evaluation(0.9, 0.25)
    assert "other-class test rows go to the target" in evaluation_summary(ev, kind="tabular")
    assert "other-class test texts" in evaluation_summary(ev, kind="text")
    sentence = evaluation_summary(ev, all_to_all=True)
    assert "25.0% of test images go to the next class (all-to-all)" in sentence and "the target" not in sentence


# ---------------------------------------------------------------- checklist: failed / not applicable stages

def test_failed_stage_is_at_the_top_of_the_html_and_exits_incomplete(tmp_path):
    from poisonguard.cli.commands import stages_exit_code

    report = Report("checklist")
    report.add_section("Model under test", "<p>table</p>", summary="Clean accuracy 97.0%.", order=10)
    report.append("stages", {"stage": "scan", "status": "failed", "error": "RuntimeError: out of memory", "seconds": 1.0})
    report.append("stages", {"stage": "federated", "status": "not_applicable", "error": "no registered architecture",
                             "seconds": 0.0})
    report.append("stages", {"stage": "certify", "status": "ok", "error": None, "seconds": 2.0})
    report.write(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert html.index("1 stage failed") < html.index("Model under test")
    assert "<strong>scan</strong> failed: RuntimeError: out of memory" in html
    assert "not applicable to this model: no registered architecture" in html
    validate_report(json.loads((tmp_path / "report.json").read_text()))
    assert stages_exit_code(report.data) == 3
    report.append("detections", {"method": "neural_cleanse", "backdoored": True, "flagged_classes": [0],
                                 "anomaly_index": [3.0, 0.1, 0.2]})
    assert stages_exit_code(report.data) == 1  # a finding outranks the gap
    assert stages_exit_code({"stages": [{"stage": "a", "status": "not_applicable"}]}) == 0


def test_federated_stage_is_not_applicable_to_a_foreign_architecture(mnist, badnets_model, tmp_path):
    from poisonguard.stages import StageContext, run_stages

    report = Report("checklist")
    ctx = StageContext(command="checklist", model=badnets_model, splits=mnist, report=report, out_dir=tmp_path,
                       arch=None, quick=True, device="cpu")
    assert run_stages(ctx, only=["federated"])
    (entry,) = report.data["stages"]
    assert entry["status"] == "not_applicable" and "not a built-in one" in entry["error"] and "TorchScript, ONNX" in entry["error"]
    assert "federated" not in report.data


def test_schema_requires_version_and_rejects_a_bad_status():
    import jsonschema

    data = json.loads(Report("scan").to_json())
    assert data["schema_version"] == 2
    validate_report(data)
    with pytest.raises(jsonschema.ValidationError):
        validate_report({**data, "stages": [{"stage": "x", "status": "maybe"}]})
    with pytest.raises(jsonschema.ValidationError):
        validate_report({k: v for k, v in data.items() if k != "schema_version"})


# ---------------------------------------------------------------- the demo's comparison, audit, sanitize, filter, DPA

def test_demo_comparison_sentence_reads_both_models():
    from poisonguard.cli.commands import comparison_summary

    text = comparison_summary(Evaluation(0.964, 0.998), Evaluation(0.962, 0.001), target=3)
    assert percents(text)[:4] == pytest.approx([0.964, 0.962, 0.998, 0.001]) and "class 3" in text
    assert "about equally" in text
    far = comparison_summary(Evaluation(0.90, 0.998), Evaluation(0.96, 0.001), target=0)
    assert "not equally" in far  # the sentence does not claim equal accuracy its numbers deny


def test_audit_sentence_counts_every_row_by_its_finding():
    from poisonguard.audit.report import finding, summary_sentence

    def row(safety, status, backdoored=None):
        verdict = None if backdoored is None else {"backdoored": backdoored}
        return {"file_safety": safety, "status": status, "verdict": verdict}

    rows = ([row("unsafe", "done")] * 2 + [row("safe", "done", True)] * 3 + [row("safe", "done", False)] * 4
            + [row("safe", "failed")] + [row("safe", "skipped")] * 2)
    text = summary_sentence(rows, resumed=5)
    counts = {f: sum(finding(r) == f for r in rows) for f in ("unsafe", "backdoored", "clean", "failed", "skipped")}
    assert counts == {"unsafe": 2, "backdoored": 3, "clean": 4, "failed": 1, "skipped": 2}
    assert text.startswith(f"{len(rows)} file(s) audited")
    for words in ("2 unsafe file(s)", "3 backdoored model(s)", "4 clean", "1 not checked", "2 array file(s)",
                  "5 taken from an earlier run"):
        assert words in text, (words, text)


def test_retrain_sentence_matches_its_table():
    from poisonguard.sanitize.report import retrain_section

    report = Report("sanitize")
    retrain_section(report, Evaluation(0.951, 0.032), kept=3800, removed=200, held_out=True)
    section = _section(report, "Retrained")
    assert percents(section.summary) == pytest.approx([0.951, 0.032])
    assert report.data["retrain"]["kept"] == 3800 and report.data["retrain"]["removed"] == 200
    report2 = Report("sanitize")
    retrain_section(report2, Evaluation(0.951, None), kept=4000, removed=0, held_out=False)
    assert "attack success" not in _section(report2, "Retrained").summary  # no trigger known: no such claim


@pytest.mark.parametrize("method,title", [("strip", "STRIP"), ("mahalanobis", "Mahalanobis")])
@pytest.mark.parametrize("rejected,verdict,word", [(30, "trojaned", "rejected, more than"),
                                                   (2, "clean", "rejected and left out of the accepted inputs; that many is within")])
def test_filter_sentence_matches_its_counts(rejected, verdict, word, method, title):
    import numpy as np

    from poisonguard.sanitize.filter_cli import filter_section

    block = {"method": method, "inputs": 100, "rejected": list(range(rejected)), "frr": 0.01, "threshold": 0.5,
             "p_excess": 1e-9 if verdict == "trojaned" else 0.6, "verdict": verdict}
    report = Report("filter")
    rng = np.random.default_rng(0)
    filter_section(report, block, rng.uniform(0.4, 2.0, 200), rng.uniform(0.0, 2.0, 100))
    text = _section(report, title).summary
    assert text.startswith(f"{rejected} of 100 inputs are {word}") and "1.0%" in text


def test_partition_sentence_reads_the_budget_it_names():
    from poisonguard.certify.sections import poisoning_section
    from poisonguard.results import PoisoningCertification

    cert = PoisoningCertification(method="dpa", partitions=50, clean_accuracy=0.856,
                                  certified_accuracy={"1": 0.84, "5": 0.797, "10": 0.716, "20": 0.424},
                                  median_certified=18, seconds=1.0,
                                  extra={"curve": {"poisoned": [0, 5, 10, 20], "certified_accuracy": [0.856, 0.797, 0.716, 0.424]}})
    report = Report("certify")
    poisoning_section(report, cert)
    text = _section(report, "partition aggregation").summary
    n = int(re.search(r"any (\d+) poisoned", text).group(1))
    assert f"{cert.certified_accuracy[str(n)]:.0%}" in text and "50 models" in text and "86%" in text


@pytest.mark.parametrize("method,k,against", [("reference_contrast", 5, True), ("neural_cleanse", 2, True),
                                              ("neural_cleanse", 5, False)])
@pytest.mark.parametrize("flagged", [True, False])
def test_method_sentence_names_what_each_class_was_compared_with(method, k, against, flagged):
    """A per-class null (reference contrast, or any two-class model) compares a class with the same
    class on the clean references; the sentence must not say "than for the other classes"."""
    from poisonguard.detect.report import method_sentence
    from poisonguard.results import Detection

    det = Detection(method=method, backdoored=flagged, flagged_classes=(0,) if flagged else (),
                    anomaly_index=tuple([0.0] * k), seconds=0.0, mask_l1=tuple([5.0] * k), threshold=2.0,
                    extra={"targets": list(range(k))})
    evidence = [{"class": c, "statistic": 40.0 if (flagged and c == 0) else 1.0, "threshold": 9.0,
                 "flagged": flagged and c == 0} for c in range(k)]
    text = method_sentence(det, evidence)
    assert ("clean reference models" in text) == against and ("other classes" in text) == (flagged and not against)
    assert text.split(": ")[1].startswith("flags class 0 (index 40.00)" if flagged else "no class above the threshold 9.00")


# ---------------------------------------------------------------- names the user's files choose

def test_class_and_layer_names_from_user_files_are_escaped_in_html():
    """A table's label values become class names and a foreign model's module names become
    layer names; both reach report.html, where markup in them must stay text."""
    from poisonguard.detect.report import detection_html
    from poisonguard.repair.report import _curve_html as repair_html

    evil = "<script>alert(1)</script>"
    det = Detection(method="neural_cleanse", backdoored=True, flagged_classes=(1,), anomaly_index=(0.5, 4.0),
                    seconds=1.0, mask_l1=(2.0, 0.5), threshold=2.0, masks=torch.zeros(2, 3),
                    patterns=torch.zeros(2, 3), extra={"feature_names": ["a", "b", "c"]})
    html = detection_html(det, None, classes=["benign", evil])
    assert evil not in html and "&lt;script&gt;" in html
    curve = [{"fraction": f, "clean_accuracy": 0.9, "attack_success_rate": 0.5} for f in (0.0, 0.5)]
    rep = Repair(method="fine_pruning", seconds=1.0, before=Evaluation(0.9, 0.9), after=Evaluation(0.9, 0.1),
                 extra={"curve": curve, "layer": evil, "pruned_channels": 1, "channels": 2})
    html = repair_html(rep)
    assert evil not in html and "&lt;script&gt;" in html


def test_a_size_counted_as_the_whole_input_is_explained_beside_its_mask():
    """reference_contrast counts a trigger the clean references follow as the whole input (18 of 18
    features), beside a drawn mask that sums to 0.8: the page said nothing of why."""
    from poisonguard.detect.report import detection_html

    masks = torch.zeros(2, 18)
    masks[1, 3] = 0.8
    det = Detection("reference_contrast", False, (), (0.0, 0.0), 1.0, mask_l1=(2.0, 18.0), masks=masks,
                    patterns=torch.zeros(2, 18),
                    extra={"followed_by_references": [False, True], "max_reference_success": 0.5})
    page = detection_html(det, None, classes=["no", "yes"])
    assert "Class(es) yes: the trigger found also moves the clean reference models (more than 50%" in page
    assert "(18 features)" in page


def test_a_clean_verdict_on_a_table_of_many_classes_says_how_weak_it_is():
    """A 10-class table with a real backdoor got "No backdoor found" with no word of the measured
    weakness (2 of 6 found on held-out tables of 4 and 7 classes)."""
    from types import SimpleNamespace

    from poisonguard.detect.report import verdict_text

    def verdict(classes, kind):
        return SimpleNamespace(methods=("reference_contrast",), false_positive_rate=0.05, statistic="robust",
                               calibrated=True, calibration={"reference_models": 8, "source": "test"},
                               data={"kind": kind, "clean_images": 300}, score=0.2, backdoored=False, targets=(),
                               evidence=tuple({"class": c} for c in range(classes)))
    assert "Caution: on tables of more than two classes" in verdict_text(verdict(10, "tabular"))
    assert "Caution" not in verdict_text(verdict(2, "tabular"))
    assert "Caution" not in verdict_text(verdict(10, "image"))


def test_the_federated_stage_never_starts_from_the_model_under_test(mnist, badnets_model, tmp_path, monkeypatch):
    """It federated on from the suspect: a backdoor the model already held (the stage's own trigger)
    read as the attackers' getting through FLAME."""
    from poisonguard.federated.simulate import Simulator, flat_params
    from poisonguard.stages import StageContext, run_stages

    starts = []

    def spy(self, splits, aggregator, attack, initial=None):
        starts.append(initial)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(Simulator, "run", spy)
    report = Report("checklist")
    ctx = StageContext(command="checklist", model=badnets_model, splits=mnist, report=report, out_dir=tmp_path,
                       arch="mnist_cnn", quick=True, device="cpu")
    run_stages(ctx, only=["federated"])
    assert starts and starts[0] is not None
    assert not torch.allclose(starts[0], flat_params(badnets_model).cpu())


def test_filter_sentence_never_calls_a_rejected_input_no_sign():
    # One triggered input, rejected: "1 of 1 inputs are rejected ... no sign of triggered inputs".
    from poisonguard.sanitize.filter_cli import excess_rejections, filter_summary

    one = filter_summary(1, 1, 0.01, excess_rejections(1, 1, 0.01), "clean")
    assert "no sign" not in one and "1 of 1 input is rejected and left out" in one
    assert "not even every one rejected would show triggered inputs" in one
    some = filter_summary(2, 100, 0.01, excess_rejections(2, 100, 0.01), "clean")
    assert "may be clean inputs rejected by chance" in some and "not even every one" not in some
    assert filter_summary(0, 100, 0.01, 1.0, "clean") == "None of 100 inputs is rejected: no sign of triggered inputs."
    assert filter_summary(9, 100, 0.01, 1e-6, "trojaned").startswith("9 of 100 inputs are rejected, more than")


def test_a_scan_whose_every_class_the_references_followed_says_it_could_not_judge():
    """Both classes of a two-class table followed by the references: every size was the whole input,
    the clean and the backdoored model read the same, and the sentence said "no class can be reached"."""
    from types import SimpleNamespace

    from poisonguard.detect.report import verdict_text

    def verdict(followed):
        det = SimpleNamespace(extra={"followed_by_references": followed})
        return SimpleNamespace(methods=("reference_contrast",), false_positive_rate=0.05, statistic="robust",
                               calibrated=True, calibration={"reference_models": 8, "source": "test"},
                               data={"kind": "tabular", "clean_images": 300}, score=0.2, backdoored=False, targets=(),
                               evidence=({"class": 0}, {"class": 1}), detections=(det,))
    assert "could not judge" in verdict_text(verdict([True, True])) and "inconclusive" in verdict_text(verdict([True, True]))
    assert "could not judge" not in verdict_text(verdict([True, False]))
    assert verdict_text(verdict([False, False])).startswith("No backdoor found: no class can be reached")


def test_a_checklist_whose_given_trigger_works_says_the_scan_missed_it():
    """checklist said backdoor_found false beside "the real trigger makes 100.0% ... go to the target"."""
    from poisonguard.cli.commands import missed_backdoor

    def data(asr, word="real", backdoored=False):
        return {"evaluation": {"attack_success_rate": asr, "attack_success_rate_trigger": word},
                "verdict": {"backdoored": backdoored}}
    assert "100.0%" in missed_backdoor(data(1.0)) and "missed detection" in missed_backdoor(data(1.0))
    assert missed_backdoor(data(1.0, "given")) is not None
    assert missed_backdoor(data(1.0, backdoored=True)) is None  # found: nothing missed
    assert missed_backdoor(data(0.03)) is None  # the trigger does not work: a clean model
    assert missed_backdoor(data(1.0, "reconstructed")) is None  # the scan's own trigger proves nothing here
    assert missed_backdoor(data(None, None)) is None


def test_a_trained_model_no_better_than_its_largest_class_is_warned_about(caplog):
    """A 10-partition ensemble on a small table answered one class everywhere (0.58, the class's
    share) with nothing said; the README lists that warning among those that always print."""
    from types import SimpleNamespace

    from poisonguard.cli.commands import _warn_if_majority_only

    test = type("Test", (), {"y": torch.tensor([1] * 58 + [0] * 42), "__len__": lambda self: 100})()
    splits = SimpleNamespace(test=test)
    with caplog.at_level("WARNING"):
        _warn_if_majority_only(SimpleNamespace(clean_accuracy=0.58), splits)
    assert "no more than always answering its largest class (58.0%)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        _warn_if_majority_only(SimpleNamespace(clean_accuracy=0.9), splits)
    assert not caplog.records
