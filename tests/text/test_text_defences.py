"""A planted rare-word backdoor in a tiny text model: scan finds the target, sanitize flags the
poisoned rows, repair removes it; the clean model and clean rows are left alone."""

from __future__ import annotations

import numpy as np
import torch


def _asr(tm, splits, trig):
    from poisonguard.attacks.text import text_attack_success_rate

    return text_attack_success_rate(tm.model, tm.tokenizer, splits.test, trig)[0]


def test_backdoor_takes_and_clean_accuracy_holds(backdoored_text, clean_text, text_splits):
    from poisonguard.data.text import encode
    from poisonguard.metrics import accuracy

    tm, trig, _, _ = backdoored_text
    assert accuracy(tm.model, encode(text_splits.test, tm.tokenizer)) > 0.85
    assert accuracy(clean_text.model, encode(text_splits.test, clean_text.tokenizer)) > 0.85
    assert _asr(tm, text_splits, trig) > 0.9
    assert _asr(clean_text, text_splits, trig) < 0.3




def test_scan_finds_the_target_and_passes_the_clean_model(backdoored_text, clean_text, text_splits, calibration, fast_scan):
    from poisonguard.detect.text_scan import text_scan_verdict

    tm, trig, _, _ = backdoored_text
    v = text_scan_verdict(tm, text_splits.test, device="cpu", options=fast_scan, calibration=calibration)
    assert v.backdoored and v.targets[0] == trig.target
    words = v.detections[0].extra["trigger_words"][trig.target]
    assert "cf" in words
    clean = text_scan_verdict(clean_text, text_splits.test, device="cpu", options=fast_scan, calibration=calibration)
    assert not clean.backdoored
    assert f"{len(text_splits.test)} clean texts" in clean.sentence and "images" not in clean.sentence


def test_sanitize_flags_the_poisoned_rows_only(backdoored_text, clean_text, text_splits):
    from poisonguard.data.text import encode
    from poisonguard.sanitize.text_keywords import TextKeywordFilter

    tm, trig, poisoned, idx = backdoored_text
    res = TextKeywordFilter().run(tm.model, encode(poisoned, tm.tokenizer).x, poisoned.y, vocab=tm.tokenizer.vocab)
    flagged = np.zeros(len(poisoned), bool)
    flagged[list(res.flagged)] = True
    is_poison = np.zeros(len(poisoned), bool)
    is_poison[idx] = True
    assert flagged[is_poison].mean() > 0.95 and flagged[~is_poison].mean() < 0.02
    assert res.targets == (trig.target,) and res.triggers[0]["words"] == ["cf"]
    clean = TextKeywordFilter().run(clean_text.model, encode(text_splits.train, clean_text.tokenizer).x,
                                    text_splits.train.y, vocab=clean_text.tokenizer.vocab)
    assert clean.flagged == () and clean.targets == ()


def test_fine_pruning_removes_the_backdoor_and_leaves_the_input_model(backdoored_text, text_splits):
    from poisonguard.attacks.text import text_attack_success_rate
    from poisonguard.data.text import encode
    from poisonguard.metrics import accuracy
    from poisonguard.repair.text_pruning import TextFinePruning

    tm, trig, _, _ = backdoored_text
    before = {k: v.clone() for k, v in tm.model.state_dict().items()}
    clean = encode(text_splits.test, tm.tokenizer)
    fixed, info = TextFinePruning(epochs=4, device="cpu").repair(tm.model, clean)
    assert all(torch.equal(before[k], v) for k, v in tm.model.state_dict().items())
    assert text_attack_success_rate(fixed, tm.tokenizer, text_splits.test, trig)[0] < 0.2
    assert accuracy(fixed, clean) > 0.8 and info["pruned_units"] > 0
