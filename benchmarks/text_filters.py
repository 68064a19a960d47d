"""Issue 19, text: the run-time input filters (STRIP with superimposed texts, STRIP-ViTA's word
replacement, ONION with a local bigram model) on the text checklist's Fortunes models.

Same split and models as benchmarks/text_checklist.py (a text_cnn per seed and trigger, 5%
dirty-label poison on the attacker's half; cached in .cache/text-checklist/). The defender
holds the clean half B: its texts are STRIP's donors and ONION's language-model corpus. The
held-out texts are halved: the first half sets each filter's threshold at the FRR, the second
half is filtered as is (false rejections) and with the trigger inserted into its non-target
texts (true rejections). Seed 0 is where the STRIP perturbation was chosen; 1-4 are held out.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/text_filters.py --seeds 0,1,2,3,4 [--frr 0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_checklist import SENTENCE, fortunes_splits, trained  # noqa: E402

from poisonguard.attacks.text import TextTrigger, poison_text  # noqa: E402
from poisonguard.sanitize.onion import OnionFilter  # noqa: E402
from poisonguard.sanitize.strip_text import TextStripFilter  # noqa: E402

FILTERS = {
    "strip-mix": lambda frr, seed: TextStripFilter(perturbation="mix", frr=frr, seed=seed),
    "strip-replace": lambda frr, seed: TextStripFilter(perturbation="replace", frr=frr, seed=seed),
    "onion": lambda frr, seed: OnionFilter(frr=frr, seed=seed),
}


def rejected(name: str, filt, model, x) -> np.ndarray:
    if name == "onion":
        return filt.scores(x) > filt.threshold
    return filt.entropy(model, x) < filt.threshold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--frr", type=float, default=0.05)
    ap.add_argument("--rate", type=float, default=0.05)
    args = ap.parse_args()
    sp = fortunes_splits()
    half = np.random.default_rng(0).permutation(len(sp.train))
    attacker, defender = sp.train.subset(np.sort(half[: len(half) // 2])), sp.train.subset(np.sort(half[len(half) // 2:]))
    cut = len(sp.test.texts) // 2
    threshold_texts, probes = sp.test.texts[:cut], sp.test.texts[cut:]
    probe_y = sp.test.y[cut:].numpy()
    print(f"threshold on {cut} held-out texts, {len(probes)} probes, FRR {args.frr}")
    totals: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        target = seed % sp.num_classes
        for kind in ("words", "sentence"):
            trig = TextTrigger(kind=kind, target=target, tokens=("cf",), sentence=SENTENCE, seed=seed)
            corpus, _ = poison_text(attacker, trig, rate=args.rate, seed=seed)
            tm, _ = trained(f"{kind}-{seed}-{target}", corpus, sp.classes, seed)
            tok = tm.tokenizer
            donors, thr = tok.encode(defender.texts), tok.encode(threshold_texts)
            clean = tok.encode(probes)
            keep = np.flatnonzero(probe_y != target)
            triggered = tok.encode(trig.apply_texts([probes[i] for i in keep], seed=seed + 100))
            row = {"seed": seed, "kind": kind, "target": target}
            for name, make in FILTERS.items():
                filt = make(args.frr, seed)
                filt = filt.fit(donors, thr, len(tok)) if name == "onion" else filt.fit(tm.model, thr, donors)
                tpr = float(rejected(name, filt, tm.model, triggered).mean())
                frr = float(rejected(name, filt, tm.model, clean).mean())
                row[name] = {"tpr": round(tpr, 3), "frr": round(frr, 3)}
                totals.setdefault((name, kind), []).append((tpr, frr))
            print(json.dumps(row), flush=True)
    print(f"\nsummary (goal of issue 19 for text sanitize: TPR >= 0.90 at FPR <= 0.05), FRR target {args.frr}")
    for (name, kind), vals in sorted(totals.items()):
        tprs, frrs = zip(*vals)
        print(f"{name:14s} {kind:9s} TPR min {min(tprs):.3f} mean {np.mean(tprs):.3f}  FRR max {max(frrs):.3f} "
              f"mean {np.mean(frrs):.3f}  ({sum(t >= 0.9 and f <= 0.05 for t, f in vals)}/{len(vals)} meet both)")


if __name__ == "__main__":
    main()
