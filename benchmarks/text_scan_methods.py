"""Issue 19, text: the scan's methods compared on the text checklist's models (sentence-trigger work).

Trains (or reads from the checklist's cache) the clean, rare-word and sentence text_cnn models of
`text_checklist.py` for the given seeds and the 4 clean references the defender trains on its
half, runs each text detector on the held-out texts, caches every model's per-class sizes, and
prints the calibrated text verdict (reference index, Bonferroni over classes x methods) for each
method set. Use tuning seeds (10-12) to choose; report seeds (0-4) once the choice is fixed.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice python benchmarks/text_scan_methods.py --seeds 10,11,12 \
        --sets text_inversion+text_phrase,text_inversion+text_ngram
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_checklist import CACHE, SENTENCE, trained  # noqa: E402

from poisonguard.attacks.text import TextTrigger, poison_text  # noqa: E402
from poisonguard.data.fortunes import write_fortunes_csv  # noqa: E402
from poisonguard.data.text import encode, load_text  # noqa: E402
from poisonguard.detect.calibration import Calibration, fit_null  # noqa: E402
from poisonguard.detect.text_scan import _detect, calibrated_text_verdict  # noqa: E402


def sizes_of(tm, name, method, options, test, seed, store):
    key = f"{name}|{method}|{json.dumps(options, sort_keys=True)}|{seed}"
    if key not in store:
        t0 = time.perf_counter()
        det = _detect(tm.model, encode(test, tm.tokenizer), {method: options}, seed, "cpu", tm.embedding_module, method)
        store[key] = {"sizes": list(det.mask_l1), "words": det.extra["trigger_words"], "flip": det.extra["flip_rate"],
                      "s": round(time.perf_counter() - t0, 1)}
    return store[key]


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="10,11,12")
    ap.add_argument("--sets", default="text_inversion+text_phrase,text_inversion+text_ngram")
    ap.add_argument("--options", default="{}", help="JSON {method: {option: value}}")
    ap.add_argument("--store", default=str(CACHE / "scan-sizes.json"))
    ap.add_argument("--references", type=int, default=4)
    args = ap.parse_args()
    options = json.loads(args.options)
    store_path = Path(args.store)
    store = json.loads(store_path.read_text()) if store_path.is_file() else {}
    csv_path = CACHE / "fortunes.csv"
    CACHE.mkdir(parents=True, exist_ok=True)
    write_fortunes_csv(csv_path)
    sp = load_text(str(csv_path), text_column="text", label_column="topic", seed=0)
    half = np.random.default_rng(0).permutation(len(sp.train))
    attacker, defender = sp.train.subset(np.sort(half[: len(half) // 2])), sp.train.subset(np.sort(half[len(half) // 2:]))
    sets = [s.split("+") for s in args.sets.split(",")]
    methods = sorted({m for s in sets for m in s})
    # References as calibrate_text trains them (calibration seed 0: model seeds 1000 + r), the
    # detector seeded 0 as calibrate_text seeds it; cached like the suspects.
    refs = {m: [] for m in methods}
    for r in range(args.references):
        tm, _ = trained(f"ref-{r}", defender, sp.classes, 1000 + r)
        for m in methods:
            refs[m].append(sizes_of(tm, f"ref-{r}", m, options.get(m, {}), sp.test, 0, store)["sizes"])
        store_path.write_text(json.dumps(store))
    cal = Calibration(key="bench", architecture="text_cnn", source="clean data", n_models=args.references,
                      clean_images=len(defender), seconds=0.0, methods={m: fit_null(s) for m, s in refs.items()})
    for m in methods:
        print(f"refs {m}: " + " | ".join(" ".join(f"{v:.3f}" for v in row) for row in refs[m]))
    tally = {tuple(s): {"words": 0, "sentence": 0, "clean": 0, "n": 0} for s in sets}
    for seed in [int(s) for s in args.seeds.split(",")]:
        target = seed % sp.num_classes
        for kind in ("clean", "words", "sentence"):
            trig = None if kind == "clean" else TextTrigger(kind=kind, target=target, tokens=("cf",), sentence=SENTENCE, seed=seed)
            corpus = attacker if trig is None else poison_text(attacker, trig, rate=0.05, seed=seed)[0]
            name = f"{kind}-{seed}-{target}"
            tm, _ = trained(name, corpus, sp.classes, seed)
            res = {m: sizes_of(tm, name, m, options.get(m, {}), sp.test, seed, store) for m in methods}
            store_path.write_text(json.dumps(store))
            for m in methods:
                print(f"{name} {m} ({res[m]['s']} s): sizes {[round(v, 3) for v in res[m]['sizes']]} "
                      f"flip {res[m]['flip']} target words {res[m]['words'][target]}", flush=True)
            for s in sets:
                dets = [_Det(m, res[m]["sizes"]) for m in s]
                v = calibrated_text_verdict(dets, cal, fpr=0.05)
                idx = {f"{e['method'][5:9]}{e['class']}": round(e["statistic"], 2) for e in v.evidence}
                found = trig is not None and target in v.targets
                t = tally[tuple(s)]
                t["n"] += kind == "clean"
                t[kind] += found if trig is not None else v.backdoored
                print(f"   {'+'.join(s)}: targets {list(v.targets)} (thr {v.evidence[0]['threshold']:.2f}) index {idx}")
    print("\nsummary (found / flagged of n per seed set)")
    for s, t in tally.items():
        print(f"  {'+'.join(s)}: sentence found {t['sentence']}/{t['n']}, rare word found {t['words']}/{t['n']}, "
              f"clean flagged {t['clean']}/{t['n']}")


class _Det:
    def __init__(self, method, sizes):
        self.method, self.mask_l1 = method, sizes


if __name__ == "__main__":
    main()
