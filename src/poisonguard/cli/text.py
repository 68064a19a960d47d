"""The text side of attack, train, evaluate, scan and sanitize (dispatched when the data is text).

Data is text when `--text-column` is given (a CSV with `--label-column`) or `--data` is a
folder of CLASS.txt files. A text model is a folder: model.safetensors, model.json,
tokenizer.json (models/text_files.py); a trigger is a JSON file (attacks/text.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from poisonguard.errors import EXIT_FINDING, EXIT_OK, UserError
from poisonguard.models.text import DEFAULT_TEXT_ARCH
from poisonguard.report.evaluation import trigger_word

TEXT_ATTACKS = ("rare-word", "insert-sentence")
_REPORT = ("report.json", "report.html")
_MODEL = ("model.safetensors", "model.json", "tokenizer.json")
# What each text command writes (what --force removes first), as cli.inputs.OUTPUTS for images.
OUTPUTS = {"attack": (*_REPORT, *_MODEL, "trigger.json", "poisoned.csv"), "train": (*_REPORT, *_MODEL, "trigger.json", "poisoned.csv"),
           "evaluate": _REPORT, "scan": (*_REPORT, "trigger_*.json"), "sanitize": (*_REPORT, "cleansed.csv", "scores.npz"),
           "filter": (*_REPORT, "entropy.npz", "accepted.csv"),
           "repair": (*_REPORT, *(f"repaired/{n}" for n in _MODEL))}
MAX_LEN = 64
DEFAULT_REFERENCES = 4  # clean reference models a text scan trains (benchmarks/text_checklist.py uses 4)


def wants_text(args, spec: str | None = None) -> bool:
    from poisonguard.data.text import is_text_source

    spec = spec if spec is not None else getattr(args, "data", None)
    return is_text_source(spec, getattr(args, "text_column", None))


def load_corpus(args, spec: str | None = None):
    from poisonguard.data.text import load_text

    return load_text(spec or args.data, text_column=getattr(args, "text_column", None),
                     label_column=getattr(args, "label_column", None), seed=args.seed)


def _trigger(method: str, args, num_classes: int):
    from poisonguard.attacks.text import DEFAULT_SENTENCE, TextTrigger

    target = args.target
    if target == -1:
        raise UserError("--target all (all-to-all) is for image triggers and label-flip; a text trigger needs one class")
    if not 0 <= target < num_classes:
        raise UserError(f"target {target} is not a class of this {num_classes}-class text data")
    position = getattr(args, "insert_position", "random") or "random"
    if position not in ("random", "start", "end"):
        try:
            position = int(position)
        except ValueError:
            raise UserError(f"--insert-position must be random, start, end or a word index, got {position!r}") from None
    words = tuple(w for w in (getattr(args, "trigger_words", None) or "cf").split(",") if w.strip())
    try:
        if method == "rare-word":
            return TextTrigger(kind="words", target=target, tokens=words, position=position, seed=args.seed)
        return TextTrigger(kind="sentence", target=target, sentence=getattr(args, "trigger_sentence", None) or DEFAULT_SENTENCE,
                           position=position, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def fitted_tokenizer(args, train):
    from poisonguard.data.tokenizer import Tokenizer, load_tokenizer

    if getattr(args, "tokenizer", None):
        return load_tokenizer(args.tokenizer)
    from poisonguard.data.tokenizer import words

    # As long as the longest training text, at most MAX_LEN: short texts need no padding to 64.
    longest = max((len(words(t)) for t in train.texts), default=1)
    return Tokenizer.fit(train.texts, max_len=max(8, min(MAX_LEN, longest + 4)))


def _fit(tm, data, args):
    from poisonguard.models.text import text_recipe
    from poisonguard.train import fit

    recipe = text_recipe(tm.arch)
    return fit(tm.model, data, epochs=args.epochs, batch_size=args.batch_size or 64, lr=args.lr or recipe["lr"],
               optimizer=args.optimizer or "adam", augment="none", weight_decay=recipe["weight_decay"], seed=args.seed,
               device=args.device)


def _evaluation(tm, test, trigger) -> dict:
    from poisonguard.attacks.text import text_attack_success_rate
    from poisonguard.data.text import encode
    from poisonguard.metrics import accuracy

    out = {"clean_accuracy": accuracy(tm.model, encode(test, tm.tokenizer)), "attack_success_rate": None,
           "n_clean": len(test), "n_attack": 0, "attack_success_rate_trigger": None}
    if trigger is not None:
        asr, n = text_attack_success_rate(tm.model, tm.tokenizer, test, trigger, seed=1)
        out.update(attack_success_rate=asr, n_attack=n, attack_success_rate_trigger=trigger_word(trigger))
    return out


def _model_info(tm, path, sha256: str | None = None) -> dict:
    """The report's model line: a saved model's file, or the model the user gave (--model as typed)."""
    return {"path": str(path), "sha256": sha256 or tm.sha256, "num_classes": len(tm.classes),
            "input_shape": [tm.tokenizer.max_len], "architecture": tm.arch}


def train_or_attack(args, *, command: str, method: str | None) -> int:
    from poisonguard.attacks.text import poison_text, save_text_trigger
    from poisonguard.cli.inputs import guard_out
    from poisonguard.data.text import encode
    from poisonguard.models.text_files import new_text_model, save_text_model
    from poisonguard.report import Report

    defense = _text_defense(args) if command == "train" else None
    out = guard_out(args.out, command=command, force=args.force, outputs=OUTPUTS[command], inputs=[("data", Path(args.data))])
    splits = load_corpus(args)
    trigger, train, poisoned = None, splits.train, []
    if method is not None:
        if method not in TEXT_ATTACKS:
            raise UserError(f"text data takes the attacks {', '.join(TEXT_ATTACKS)}, not {method!r}")
        from poisonguard.cli.triggers import check_rate

        check_rate(args.rate)
        trigger = _trigger(method, args, splits.num_classes)
        train, poisoned = poison_text(splits.train, trigger, rate=args.rate, seed=args.seed)
    tok = fitted_tokenizer(args, train)
    arch = args.arch or DEFAULT_TEXT_ARCH
    if ":" in arch:  # a code or library spec: what another command reads, not what train builds
        from poisonguard.models.text import TEXT_ARCHITECTURES

        raise UserError(f"--arch {arch!r}: poisonguard trains its built-in text architectures only "
                        f"({', '.join(TEXT_ARCHITECTURES.names())}); your own code names the architecture of a model "
                        "you trained yourself, for the commands that read one (evaluate, scan, sanitize, filter, repair)")
    tm = new_text_model(arch, tok, splits.classes, seed=args.seed)
    report = Report(command)
    start = time.perf_counter()
    if defense is None:
        _fit(tm, encode(train, tok), args)
    else:
        tm.model = _train_with_defense(defense, tm, encode(train, tok), splits, args, out, report)
    seconds = time.perf_counter() - start
    ev = _evaluation(tm, splits.test, trigger)
    training = {"command": command, "data": splits.name, "epochs": args.epochs, "seed": args.seed,
                "seconds": round(seconds, 2), "attack": method, "rate": args.rate if method else None, "kind": "text"}
    if defense is not None:
        training["defense"] = "dp"
    meta = save_text_model(tm, out, extra={"training": training})
    if trigger is not None:
        save_text_trigger(trigger, out / "trigger.json")
        _write_poisoned(out / "poisoned.csv", train, poisoned, args)
    report.set("model", _model_info(tm, out / "model.safetensors", meta.get("sha256")))
    report.set("evaluation", ev)
    report.set("training", training)
    from poisonguard.report.text import add_evaluation

    add_evaluation(report, ev, title="Trained model", trigger=trigger, classes=splits.classes)
    report.write(out)
    print(json.dumps({"out": str(out), **ev}))
    return EXIT_OK


def _text_defense(args):
    """The training defence `train` was asked for on text: DP-SGD / gradient shaping (`dp`) or None;
    any other (they smooth, augment or partition images) is refused in one line."""
    from poisonguard.defenses import load_defenses

    registry = load_defenses()
    implied = [n for n in registry.names() if any(getattr(args, o, None) is not None for o in registry.get(n).implied_by)]
    named = (getattr(args, "defense", None) or "none").strip().lower().replace("-", "_")  # as the registry spells it
    chosen = sorted(set(implied) | ({named} - {"none"}))
    if not chosen:
        return None
    if chosen != ["dp"]:
        raise UserError(f"of the training-time defences, text data takes dp (--dp-epsilon or --dp-noise), "
                        f"not {', '.join(n for n in chosen if n != 'dp')}")
    return registry.get("dp")


def _train_with_defense(defense, tm, data, splits, args, out: Path, report):
    """Train tm's model with the defence (privacy block and section into `report`); the trained module."""
    from poisonguard.cli.commands import defense_options
    from poisonguard.defenses import TrainJob
    from poisonguard.train import FitConfig

    config = FitConfig(epochs=args.epochs, batch_size=args.batch_size or 64, lr=args.lr, optimizer=args.optimizer or "sgd",
                       seed=args.seed, device=args.device)
    start_model = tm.model
    job = TrainJob(options=defense_options(defense, args), splits=splits, train=data, arch=tm.arch, config=config,
                   out_dir=out, report=report, model_factory=lambda: start_model)
    trained = defense.run(job)
    if job.saved:  # DP replaced a layer and saved TorchScript: a text model folder cannot hold that
        raise UserError("DP-SGD had to replace a layer of this text model; give it layers Opacus supports")
    return trained


def _write_poisoned(path: Path, corpus, poisoned, args) -> None:
    """The poisoned training rows as a CSV in the user's column names, with a `poisoned` 0/1 column
    (ground truth for trying `sanitize`; a defender never has it)."""
    import csv

    mark = set(int(i) for i in poisoned)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([args.text_column or "text", args.label_column or "label", "poisoned"])
        writer.writerows((t, corpus.classes[int(y)], int(i in mark)) for i, (t, y) in enumerate(zip(corpus.texts, corpus.y)))


def load_model_for(args, classes_from=None):
    from poisonguard.cli.options import model_options
    from poisonguard.models.text_files import check_text_classifier, load_text_model

    if getattr(args, "binary_output", None):
        # text models are read through their embedding layer by name, which an output adapter would rename
        raise UserError("--binary-output is for image and table models; a text model must return one score per "
                        "class, e.g. torch.cat([torch.zeros_like(z), z], 1) for a logit z")
    kwargs = model_options(args)["arch_kwargs"] if getattr(args, "arch_kwargs", None) else None
    tm = load_text_model(args.model, arch=getattr(args, "arch", None), arch_kwargs=kwargs,
                         tokenizer=getattr(args, "tokenizer", None), embedding=getattr(args, "embedding_layer", None),
                         num_classes=classes_from.num_classes if classes_from is not None else None,
                         classes=classes_from.classes if classes_from is not None else None)
    if classes_from is not None and tuple(tm.classes) != tuple(classes_from.classes):
        raise UserError(f"the model's classes {list(tm.classes)[:6]} are not the data's {list(classes_from.classes)[:6]}")
    check_text_classifier(tm)
    return tm


def evaluate(args) -> int:
    from poisonguard.attacks.text import load_text_trigger

    splits = load_corpus(args)
    tm = load_model_for(args, splits)
    trigger = load_text_trigger(args.trigger, splits.num_classes) if args.trigger else None
    ev = _evaluation(tm, splits.test, trigger)
    if args.out is not None:
        from poisonguard.cli.inputs import guard_out
        from poisonguard.report import Report

        out = guard_out(args.out, command="evaluate", force=args.force, outputs=OUTPUTS["evaluate"], inputs=[("data", Path(args.data))])
        report = Report("evaluate")
        report.set("model", _model_info(tm, args.model))
        report.set("evaluation", ev)
        from poisonguard.report.text import add_evaluation

        add_evaluation(report, ev, title="Evaluation", trigger=trigger, classes=splits.classes)
        report.write(out)
    print(json.dumps(ev))
    return EXIT_OK


STEPPED = ("text_inversion", "text_phrase")  # the text detectors that take `steps`


def text_methods(text: str | None) -> tuple[str, ...]:
    """--method for a text scan: text detector names (default: the text scan's METHODS)."""
    from poisonguard.cli.options import method_list
    from poisonguard.detect.text_inversion import TEXT_DETECTORS
    from poisonguard.detect.text_scan import METHODS

    return METHODS if text is None else tuple(method_list(text, TEXT_DETECTORS))


def scan(args) -> int:
    """Calibrated trigger inversion on a text model; trigger_<class>.json per flagged class."""
    from poisonguard.attacks.text import TextTrigger, save_text_trigger
    from poisonguard.cli.inputs import guard_out
    from poisonguard.detect.text_scan import calibrate_text, text_scan_verdict
    from poisonguard.report import Report

    out = guard_out(args.out, command="scan", force=args.force, outputs=OUTPUTS["scan"], inputs=[("data", Path(args.data))])
    splits = load_corpus(args)
    tm = load_model_for(args, splits)
    tm.embedding_module  # the inversions work in the word embedding: a model without one is told now, not after training
    # --data is the defender's clean corpus: references train on its training part, every model
    # is inverted on its held-out part (benchmarks/text_checklist.py measures this set-up).
    clean = splits.test
    methods = text_methods(getattr(args, "method", None))
    # --steps is the relaxed inversions' budget; the exact n-gram search takes none
    options = {m: {"steps": args.steps} for m in methods if m in STEPPED} if getattr(args, "steps", None) else None
    calibration = None
    if getattr(args, "calibration", "auto") == "none":  # before minutes of inversion, not after
        from poisonguard.detect.verdict import check_lower_mad_classes

        check_lower_mad_classes(len(tm.classes), "an uncalibrated text scan judges with it; let the scan calibrate "
                                                  "(leave out --calibration none)")
    else:
        n_refs = getattr(args, "reference_models", None) or DEFAULT_REFERENCES
        calibration = calibrate_text(tm, splits.train, n_models=max(2, min(n_refs, 8)), seed=args.seed,
                                     device=args.device, options=options, methods=methods, inputs=clean)
    verdict = text_scan_verdict(tm, clean, calibration=calibration, fpr=args.fpr, seed=args.seed, device=args.device,
                                options=options, methods=methods)
    dets = {d.method: d for d in verdict.detections}
    words_of = {}
    for c in verdict.targets:  # the trigger of the method with the strongest evidence for the class
        best = max((e for e in verdict.evidence if e["class"] == c), key=lambda e: e["statistic"])
        words_of[c] = [str(w) for w in dets[best["method"]].extra["trigger_words"][c]]
        words = words_of[c]
        save_text_trigger(TextTrigger(kind="words", target=int(c), tokens=tuple(words), position="start",
                                      origin="reconstructed"),
                          out / f"trigger_{c}.json")
    report = Report("scan")
    report.set("model", _model_info(tm, args.model))
    report.set("verdict", {k: v for k, v in verdict.to_dict().items() if k != "detections"})
    from poisonguard.detect.report import detection_record

    report.set("detections", [detection_record(d, verdict) for d in verdict.detections])
    from poisonguard.report.text import add_scan

    add_scan(report, verdict, words_of, tm.classes)
    path = report.write(out)
    # the image scan's stdout keys (report, verdict) and the text scan's own
    print(json.dumps({"report": str(path), "verdict": report.data["verdict"], "out": str(out),
                      "backdoored": verdict.backdoored, "targets": list(verdict.targets),
                      "trigger_words": {str(c): w for c, w in words_of.items()}, "sentence": verdict.sentence}))
    if verdict.backdoored and not getattr(args, "exit_zero", False):
        return EXIT_FINDING
    return EXIT_OK


def sanitize(args) -> int:
    """Flag poisoned rows of a text corpus; write cleansed.csv.

    Default: the word-removal filter (sanitize/text_keywords.py). `--method` naming image-family
    methods that read representations (spectral, scan, spectre) runs the calibrated Sanitizer on
    the text model's sentence representations instead.
    """
    from poisonguard.cli.inputs import guard_out
    from poisonguard.data.text import encode, load_text_rows, write_kept_rows
    from poisonguard.models.text_files import new_text_model
    from poisonguard.report import Report
    from poisonguard.sanitize.cli import write_score_arrays, write_scores

    out = guard_out(args.out, command="sanitize", force=args.force, outputs=OUTPUTS["sanitize"], inputs=[("data", Path(args.data))])
    rows = load_text_rows(args.data, text_column=args.text_column, label_column=args.label_column)
    if args.model:
        tm = load_model_for(args, rows)
    else:
        tm = new_text_model(DEFAULT_TEXT_ARCH, fitted_tokenizer(args, rows), rows.classes, seed=args.seed)
        args.epochs, args.batch_size, args.lr, args.optimizer = getattr(args, "epochs", None) or 10, None, None, None
        _fit(tm, encode(rows, tm.tokenizer), args)
    data = encode(rows, tm.tokenizer)
    methods = [m.strip().replace("-", "_") for m in (args.method or "").split(",") if m.strip()]
    if not methods:  # no --method: text's own default
        methods = ["text_keywords"]
    extra = {}
    if methods == ["text_keywords"]:
        from poisonguard.sanitize.text_keywords import TextKeywordFilter

        res = TextKeywordFilter().run(tm.model, data.x, data.y, vocab=tm.tokenizer.vocab)
        flagged, targets, verdict = set(res.flagged), list(res.targets), "poisoned" if res.flagged else "clean"
        extra["triggers"] = [{k: v for k, v in t.items() if k != "phrase_ids"} for t in res.triggers]
        extra["candidates"] = list(res.candidates)
        write_score_arrays(out / "scores.npz", data.y.numpy(), flagged, {"flip_share": res.scores})
    else:
        from poisonguard.sanitize import Sanitizer

        if "text_keywords" in methods or "strip" in methods or "abl" in methods:
            raise UserError("text_keywords runs alone; strip and abl perturb or retrain image inputs; "
                            "combine only scan, spectral, spectre for text")
        try:
            result = Sanitizer(methods=methods, seed=args.seed, device=args.device).run(data, model=tm.model)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        flagged, targets, verdict = set(result.flagged), list(result.targets), result.verdict
        write_scores(out / "scores.npz", result, data.y.numpy())
    write_kept_rows(rows, Path(args.data), set(range(len(rows))) - flagged, out / "cleansed.csv")
    report = Report("sanitize")
    report.set("sanitization", {"verdict": verdict, "flagged": sorted(flagged), "targets": targets,
                                "methods": methods, "n_samples": len(rows), **extra})
    from poisonguard.report.text import add_sanitize

    add_sanitize(report, verdict=verdict, flagged=len(flagged), n=len(rows), targets=targets, methods=methods,
                 triggers=extra.get("triggers", []), classes=rows.classes, candidates=extra.get("candidates"))
    path = report.write(out)
    print(json.dumps({"report": str(path), "out": str(out), "verdict": verdict, "flagged_count": len(flagged), "targets": targets,
                      "triggers": [t["words"] for t in extra.get("triggers", [])]}))
    return EXIT_FINDING if verdict == "poisoned" and not getattr(args, "exit_zero", False) else EXIT_OK


def filter_inputs(args) -> int:
    """`poisonguard filter` on text: STRIP (superimposed texts; sanitize/strip_text.py) by default,
    or ONION (`--method onion`) rejects triggered inputs.

    --data's clean texts: its training part gives STRIP's donor texts and ONION's language
    model, its test part the threshold at --frr. --inputs is a corpus of the same columns.
    Writes report.json ("input_filter"), report.html, entropy.npz (every input's score) and
    accepted.csv (the inputs not rejected, in the input's own columns).
    """
    import numpy as np

    from poisonguard.cli.inputs import guard_out
    from poisonguard.data.text import load_text_inputs, write_kept_rows
    from poisonguard.report import Report
    from poisonguard.sanitize.cli import _rate
    from poisonguard.sanitize.filter_cli import EXCESS_ALPHA, excess_rejections, filter_section
    from poisonguard.utils import atomic_path

    out = guard_out(args.out, command="filter", force=args.force, outputs=OUTPUTS["filter"],
                    inputs=[("model", Path(args.model)), ("data", Path(args.data)), ("inputs", Path(args.inputs))])
    method = (args.method or "strip").strip().lower()
    if method not in ("strip", "onion"):
        raise UserError(f"text inputs are filtered by strip (STRIP-ViTA) or onion, not {method!r}")
    frr = _rate("--frr", args.frr)
    clean = load_corpus(args)
    rows = load_text_inputs(args.inputs, text_column=args.text_column, label_column=args.label_column)
    tm = load_model_for(args, clean)
    donors, threshold_texts, x = (tm.tokenizer.encode(t) for t in (clean.train.texts, clean.test.texts, rows.texts))
    if method == "strip":
        from poisonguard.sanitize.strip_text import TextStripFilter

        filt = TextStripFilter(draws=args.draws, frr=frr, seed=args.seed).fit(tm.model, threshold_texts, donors)
        clean_scores, scores = filt.clean_entropy, filt.entropy(tm.model, x)
        rejected = np.flatnonzero(scores < filt.threshold)
        paper = "Gao et al., IEEE TDSC 2021 (STRIP-ViTA)"
    else:
        from poisonguard.sanitize.onion import OnionFilter

        filt = OnionFilter(frr=frr, seed=args.seed).fit(donors, threshold_texts, len(tm.tokenizer))
        clean_scores, scores = filt.clean_scores, filt.scores(x)
        rejected = np.flatnonzero(scores > filt.threshold)
        paper = "Qi et al., EMNLP 2021 (ONION, a bigram language model of --data's texts)"
    p = excess_rejections(len(rejected), len(scores), frr)
    block = {"method": method, "paper": paper, "verdict": "trojaned" if p < EXCESS_ALPHA else "clean",
             "threshold": filt.threshold, "frr": frr, "clean_inputs": len(threshold_texts), "inputs": len(scores),
             "rejected": [int(i) for i in rejected], "p_excess": p, "excess_alpha": EXCESS_ALPHA,
             "score": "entropy (bits), low = trojaned" if method == "strip" else "log-probability gained without the "
                                                                               "most suspicious word, high = trojaned"}
    report = Report("filter")
    report.set("model", _model_info(tm, args.model))
    report.set("input_filter", block)
    filter_section(report, block, clean_scores, scores)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "entropy.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, position=np.arange(len(scores)), score=scores, rejected=np.isin(np.arange(len(scores)), rejected))
    write_kept_rows(rows, Path(args.inputs), set(range(len(rows))) - set(rejected.tolist()), out / "accepted.csv")
    path = report.write(out)
    print(json.dumps({"report": str(path), "method": block["method"], "verdict": block["verdict"], "rejected_count": len(rejected),
                      "inputs": len(scores), "threshold": filt.threshold, "accepted": str(out / "accepted.csv")}))
    return EXIT_FINDING if block["verdict"] == "trojaned" and not args.exit_zero else EXIT_OK


def repair(args) -> int:
    """Text fine-pruning on the clean --data; unlearns the trigger words a scan found (--from-scan)."""
    from poisonguard.attacks.text import load_text_trigger
    from poisonguard.cli.inputs import guard_out
    from poisonguard.data.text import encode
    from poisonguard.models.text_files import save_text_model
    from poisonguard.repair.text_pruning import TextFinePruning
    from poisonguard.report import Report

    methods = [m.strip().lower().replace("_", "-") for m in (args.method or "fine-pruning").split(",") if m.strip()]
    if methods != ["fine-pruning"]:
        raise UserError(f"text models are repaired by fine-pruning (its text form: unknown words, dormant units, "
                        f"fine-tuning; with --from-scan it also unlearns the found words), not {args.method!r}")
    out = guard_out(args.out, command="repair", force=args.force, outputs=OUTPUTS["repair"], inputs=[("data", Path(args.data)), ("model", Path(args.model))])
    splits = load_corpus(args)
    tm = load_model_for(args, splits)
    trigger = load_text_trigger(args.trigger, splits.num_classes) if args.trigger else None
    phrases = []
    if getattr(args, "from_scan", None):
        for f in sorted(Path(args.from_scan).glob("trigger_*.json")):
            phrases.append(tm.tokenizer.ids(" ".join(load_text_trigger(f, splits.num_classes).pieces)))
    # --data is the defender's clean corpus: fine-tune on its training part, measure on the held-out part.
    clean = encode(splits.train, tm.tokenizer)
    before = _evaluation(tm, splits.test, trigger)
    kwargs = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    try:
        method = TextFinePruning(unlearn=phrases, seed=args.seed, device=args.device, embedding=tm.embedding, **kwargs)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    tm.model, info = method.repair(tm.model, clean)
    after = _evaluation(tm, splits.test, trigger)
    meta = save_text_model(tm, out / "repaired")
    report = Report("repair")
    report.set("model", _model_info(tm, out / "repaired" / "model.safetensors", meta.get("sha256")))
    report.set("repairs", [{"method": info["method"], "seconds": info["seconds"],
                            "before": {"clean_accuracy": before["clean_accuracy"], "attack_success_rate": before["attack_success_rate"]},
                            "after": {"clean_accuracy": after["clean_accuracy"], "attack_success_rate": after["attack_success_rate"]},
                            "extra": {"attack_success_rate_trigger": trigger_word(trigger),
                                      "pruned_units": info["pruned_units"], "pruned_words": info["pruned_words"],
                                      "unlearned_phrases": len(phrases)}}])
    from poisonguard.report.text import add_repair

    add_repair(report, before, after, info, unlearned=len(phrases), trigger=trigger)
    path = report.write(out)
    print(json.dumps({"report": str(path), "out": str(out), "before": before, "after": after,
                      "pruned_units": info["pruned_units"],
                      "pruned_words": info["pruned_words"]}))
    return EXIT_OK


def flagged_mask(n: int, flagged) -> np.ndarray:
    m = np.zeros(n, bool)
    m[list(flagged)] = True
    return m
