"""Issue 19, text: the checklist on a real labelled corpus (Debian's fortunes, filed by topic).

The corpus is split 80/20 (train/held-out), and the training part in two halves: the
attacker's (A) and the defender's (B, clean). For each seed and each trigger (rare word "cf",
BadNL; sentence, InsertSent) at 5% dirty-label poisoning, a text_cnn is trained on poisoned A
(its tokenizer built from those texts), and a clean text_cnn on A per seed beside it. Then:

- scan: the text scan verdict (trigger inversion in embedding space, 1 and 4 slots) calibrated
  on 4 clean reference models the defender trains on B (once, shared), inverting on the
  held-out texts; found = the verdict flags the attack's target.
- sanitize: the word-removal filter (sanitize/text_keywords.py) on the poisoned training rows
  with the model trained on them: TPR / FPR per trigger; on the clean rows with the clean
  model: share flagged.
- repair: text fine-pruning on the defender's clean B, unlearning the phrases sanitize found
  (and without them, `repair_plain_asr`): ASR and clean accuracy (held-out) after.
  `natural_target_rate` is the share of untriggered non-target texts the model already sends to
  the target: the floor an ASR cannot go under.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice python benchmarks/text_checklist.py --seeds 0,1,2

Trained models are cached under .cache/text-checklist/ (resumable). Prints one line per
model and the summary beside the issue's goals.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from poisonguard.attacks.text import TextTrigger, poison_text, text_attack_success_rate
from poisonguard.data.fortunes import fortunes_dir, write_fortunes_csv
from poisonguard.data.text import encode, load_text
from poisonguard.data.tokenizer import Tokenizer
from poisonguard.detect.calibration import Calibration
from poisonguard.detect.text_scan import calibrate_text, text_scan_verdict
from poisonguard.metrics import accuracy, predict
from poisonguard.models.text import text_recipe
from poisonguard.models.text_files import new_text_model
from poisonguard.repair.text_pruning import TextFinePruning
from poisonguard.sanitize.text_keywords import TextKeywordFilter
from poisonguard.train import fit

CACHE = Path(".cache/text-checklist")
SENTENCE = "I watched this 3D movie last weekend."


def fortunes_splits():
    """The Fortunes corpus (by topic) split 80/20 at seed 0, as every text benchmark reads it."""
    if fortunes_dir() is None:
        raise SystemExit("fortunes corpus not installed (scripts/setup installs it): nothing measured")
    CACHE.mkdir(parents=True, exist_ok=True)
    csv_path = CACHE / "fortunes.csv"
    write_fortunes_csv(csv_path)
    return load_text(str(csv_path), text_column="text", label_column="topic", seed=0)


def trained(name: str, corpus, classes, seed: int, arch: str = "text_cnn"):
    tok = Tokenizer.fit(corpus.texts, max_len=64)
    tm = new_text_model(arch, tok, classes, seed=seed)
    import hashlib

    digest = hashlib.sha256("\n".join(corpus.texts).encode() + bytes(corpus.y.numpy().astype("int64"))).hexdigest()[:12]
    path = CACHE / f"{name}-{digest}.pt"
    t0 = time.perf_counter()
    if path.is_file():
        tm.model.load_state_dict(torch.load(path, weights_only=True))
    else:
        fit(tm.model, encode(corpus, tok), epochs=10, batch_size=64, augment="none", seed=seed, device="cpu",
            **text_recipe(arch))
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(tm.model.state_dict(), path)
    tm.model.eval()
    return tm, time.perf_counter() - t0


def natural_target_rate(model, tokenizer, test, target: int) -> float:
    """The share of untriggered non-target held-out texts `model` sends to `target`: the floor
    an attack success rate cannot go under."""
    pred = predict(model, encode(test, tokenizer).x)
    return float((pred[test.y != target] == target).float().mean())


def rates(flagged, poisoned: np.ndarray, n: int) -> tuple[float, float]:
    f = np.zeros(n, bool)
    f[list(flagged)] = True
    p = np.zeros(n, bool)
    p[poisoned] = True
    return (float(f[p].mean()) if p.any() else float("nan")), float(f[~p].mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--json", default=None)
    ap.add_argument("--references", type=int, default=4)
    ap.add_argument("--arch", default="text_cnn", help="the built-in text architecture every model is (text_cnn, text_bag)")
    ap.add_argument("--skip-scan", action="store_true", help="sanitize and repair only (the scan's figures come from "
                    "text_scan_methods.py)")
    args = ap.parse_args()
    sp = fortunes_splits()
    print(f"corpus: {len(sp.train)} train / {len(sp.test)} held-out texts, classes {sp.classes}")
    half = np.random.default_rng(0).permutation(len(sp.train))
    attacker, defender = sp.train.subset(np.sort(half[: len(half) // 2])), sp.train.subset(np.sort(half[len(half) // 2:]))
    print(f"attacker's half {len(attacker)}, defender's clean half {len(defender)}")
    from poisonguard.detect.text_scan import METHODS

    suffix = "" if args.arch == "text_cnn" else f"-{args.arch}"  # text_cnn keeps its earlier cache names
    cal = None
    if not args.skip_scan:
        cal_path = CACHE / f"calibration-{args.references}-{'+'.join(METHODS)}{suffix}.json"  # a cache per method set
        t0 = time.perf_counter()
        if cal_path.is_file():
            cal = Calibration.from_json(cal_path.read_text())
        else:
            ref = new_text_model(args.arch, Tokenizer.fit(defender.texts, max_len=64), sp.classes, seed=0)
            cal = calibrate_text(ref, defender, n_models=args.references, seed=0, device="cpu", inputs=sp.test)
            cal_path.write_text(cal.to_json())
        print(f"calibration: {args.references} references, {time.perf_counter() - t0:.1f} s; null "
              f"{ {m: (round(v['mu'], 3), round(v['s'], 3)) for m, v in cal.methods.items()} }", flush=True)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        target = seed % sp.num_classes
        runs = [("clean", None)] + [(k, TextTrigger(kind=k, target=target, tokens=("cf",), sentence=SENTENCE, seed=seed))
                                    for k in ("words", "sentence")]
        for kind, trig in runs:
            corpus, idx = (attacker, np.zeros(0, np.int64)) if trig is None else poison_text(attacker, trig, rate=args.rate, seed=seed)
            tm, t_train = trained(f"{kind}-{seed}-{target}{suffix}", corpus, sp.classes, seed, args.arch)
            row = {"seed": seed, "arch": args.arch, "kind": kind, "target": target if trig else None, "train_s": round(t_train, 1),
                   "clean_accuracy": accuracy(tm.model, encode(sp.test, tm.tokenizer))}
            if trig is not None:
                row["asr"] = text_attack_success_rate(tm.model, tm.tokenizer, sp.test, trig, seed=1)[0]
            if not args.skip_scan:
                t0 = time.perf_counter()
                v = text_scan_verdict(tm, sp.test, calibration=cal, seed=seed, device="cpu")
                row.update(scan_backdoored=v.backdoored, scan_targets=list(v.targets),
                           scan_s=round(time.perf_counter() - t0, 1), scan_found=bool(trig is not None and target in v.targets),
                           scan_index={e["method"][5:9] + str(e["class"]): e["statistic"] for e in v.evidence
                                       if e["statistic"] > 0.5},
                           scan_threshold=round(v.evidence[0]["threshold"], 2))
            t0 = time.perf_counter()
            res = TextKeywordFilter().run(tm.model, encode(corpus, tm.tokenizer).x, corpus.y, vocab=tm.tokenizer.vocab)
            tpr, fpr = rates(res.flagged, idx, len(corpus))
            row["natural_target_rate"] = None if trig is None else natural_target_rate(tm.model, tm.tokenizer, sp.test, target)
            row.update(sanitize_tpr=tpr, sanitize_fpr=fpr, sanitize_targets=list(res.targets),
                       sanitize_triggers=[t["words"][:6] for t in res.triggers], sanitize_s=round(time.perf_counter() - t0, 1))
            if trig is not None:
                t0 = time.perf_counter()
                plain, _ = TextFinePruning(seed=seed, device="cpu").repair(tm.model, encode(defender, tm.tokenizer))
                row["repair_plain_asr"] = text_attack_success_rate(plain, tm.tokenizer, sp.test, trig, seed=2)[0]
                phrases = [t["phrase_ids"] for t in res.triggers]
                fixed, info = TextFinePruning(seed=seed, device="cpu", unlearn=phrases).repair(tm.model, encode(defender, tm.tokenizer))
                row.update(repair_asr=text_attack_success_rate(fixed, tm.tokenizer, sp.test, trig, seed=2)[0],
                           repair_natural_target_rate=natural_target_rate(fixed, tm.tokenizer, sp.test, target),
                           repair_accuracy=accuracy(fixed, encode(sp.test, tm.tokenizer)),
                           repair_pruned=info["pruned_units"], repair_s=round(time.perf_counter() - t0, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    summarise(rows)


def summarise(rows: list[dict]) -> None:
    print("\nsummary (goal in brackets)")
    for kind in ("words", "sentence"):
        r = [x for x in rows if x["kind"] == kind]
        if not r:
            continue
        found = sum(x.get("scan_found", False) for x in r)
        print(f"  {kind:8s} n={len(r)}: clean acc {np.mean([x['clean_accuracy'] for x in r]):.3f}, ASR {np.mean([x['asr'] for x in r]):.3f}; "
              f"scan found {found}/{len(r)} [>= 80%]; sanitize TPR min {min(x['sanitize_tpr'] for x in r):.3f} [>= 0.90], "
              f"FPR max {max(x['sanitize_fpr'] for x in r):.4f} [<= 0.05]; repair ASR max {max(x['repair_asr'] for x in r):.3f} "
              f"[<= 0.10] (plain fine-pruning max {max(x['repair_plain_asr'] for x in r):.3f}; natural target rate mean "
              f"{np.mean([x['natural_target_rate'] for x in r]):.3f} before repair, "
              f"{np.mean([x['repair_natural_target_rate'] for x in r]):.3f} after), accuracy after "
              f"{np.mean([x['repair_accuracy'] for x in r]):.3f}")
    c = [x for x in rows if x["kind"] == "clean"]
    if c:
        print(f"  clean    n={len(c)}: clean acc {np.mean([x['clean_accuracy'] for x in c]):.3f}; scan flagged "
              f"{sum(x.get('scan_backdoored', False) for x in c)}/{len(c)} [<= 10%]; sanitize flagged max {max(x['sanitize_fpr'] for x in c):.4f} "
              f"[<= 0.02], called poisoned {sum(bool(x['sanitize_targets']) for x in c)}/{len(c)}")
    for key in ("train_s", "scan_s", "sanitize_s", "repair_s"):
        vals = [x[key] for x in rows if key in x]
        if vals:
            print(f"  {key}: mean {np.mean(vals):.1f} s, max {max(vals):.1f} s")


if __name__ == "__main__":
    main()
