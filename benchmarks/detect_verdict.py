"""The scan verdict over the MNIST zoo (issue 16): decision rules compared on tuning seeds, reported on report seeds.

Reads the per-class trigger sizes that benchmarks/detect_benchmark.py stored in
CACHE/scans.jsonl (one scan per model and method, default hyperparameters, 5% clean data)
and judges every model with each candidate rule; rules need no rescan, only the sizes:

  paper        each paper's own rule (NC: two-sided MAD index > 2; DeepInspect: double MAD > 2)
  lower_mad    the small-side double MAD of the raw sizes (TrojanZoo's side='double')
  log_lower    double MAD of log sizes (the verdict's statistic up to calibration version 4), priors
  log_lower_cal  the same, calibrated on the TUNING seeds' clean models of the suspect's
               architecture (reference models as `scan` would train; here the zoo's own)
  loo, loo_cal, loo_scan  the same three for the verdict's default statistic since version 5,
               the trimmed leave-one-out index (`anomaly.trimmed_loo_index`)
  karm_ratio   K-Arm's symmetric ratio test: second-smallest / smallest size > 2
  log_lower_scan  the lower-half MAD calibrated as `poisonguard scan` does it: on the
               reference models that scan trained on the 5% clean data (--calibration-file
               [ARCH=]PATH, the cached JSON of a default scan, one per architecture; suspects of
               an architecture without one are left out of this rule's rows)

Prints per rule and split: detection rate (target found), clean models flagged, ROC-AUC of
the score, FPR at 95% TPR, and the TrojAI cross-entropy of the verdict's score.

    PYTHONPATH=src python benchmarks/detect_verdict.py [--methods neural_cleanse,deepinspect]
        [--dataset cifar10] [--clean-fraction 0.01] [--calibration-file mnist_cnn=PATH ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detect_zoo import DEFAULT_CACHE, TUNING_SEEDS  # noqa: E402

from poisonguard.detect.anomaly import dmad_anomaly_index, mad_anomaly_index  # noqa: E402
from poisonguard.detect.calibration import fit_null  # noqa: E402
from poisonguard.detect.verdict import judge  # noqa: E402
from poisonguard.results import Detection  # noqa: E402


def detection(row: dict) -> Detection:
    sizes = row["mask_l1"]
    own = mad_anomaly_index(sizes) if row["method"] in ("neural_cleanse", "tabor") else dmad_anomaly_index(sizes)
    med = sorted(sizes)[len(sizes) // 2]
    flagged = tuple(i for i, (v, s) in enumerate(zip(own.tolist(), sizes)) if v > 2 and s < med)
    return Detection(method=row["method"], backdoored=bool(flagged), flagged_classes=flagged,
                     anomaly_index=tuple(own.tolist()), seconds=row["seconds"], mask_l1=tuple(sizes), threshold=2.0,
                     extra={"targets": list(range(len(sizes)))})


class ZooCalibration:
    """Nulls fitted on the tuning seeds' clean models, per architecture (the `Calibration` interface)."""

    def __init__(self, rows: list[dict], arch: str) -> None:
        self.nulls = {}
        for method in {r["method"] for r in rows}:
            sizes = [r["mask_l1"] for r in rows if r["method"] == method and r["kind"] == "clean"
                     and r.get("arch") == arch and r.get("split") == "tuning"]
            if len(sizes) >= 2:
                self.nulls[method] = fit_null(sizes)

    def null_for(self, method):
        return self.nulls.get(method)

    def summary(self):
        return {"calibrated": True, "reference_models": "tuning-zoo clean models"}


# The verdict's rules: (statistic, calibration) with calibration None (priors), "cal" (the tuning
# zoo's clean models) or "scan" (the references `poisonguard scan` trained).
VERDICT_RULES = {"paper": ("paper", None),
                 "log_lower": ("lower_mad", None), "log_lower_cal": ("lower_mad", "cal"), "log_lower_scan": ("lower_mad", "scan"),
                 "loo": ("robust", None), "loo_cal": ("robust", "cal"), "loo_scan": ("robust", "scan")}


def rule_verdict(rule: str, dets: list[Detection], cal, fpr: float = 0.05):
    """The Verdict of one of VERDICT_RULES (its statistic, calibrated as the rule says)."""
    statistic, source = VERDICT_RULES[rule]
    use = cal if source == "scan" or (source == "cal" and cal.nulls) else None
    return judge(dets, fpr=fpr, statistic=statistic, calibration=use)


def verdict_of(rule: str, dets: list[Detection], cal, fpr: float = 0.05) -> tuple[bool, list[int], float]:
    if rule in VERDICT_RULES:
        v = rule_verdict(rule, dets, cal, fpr)
        return v.backdoored, list(v.targets), v.score
    if rule == "lower_mad":
        best, targets = 0.0, []
        for d in dets:
            idx = dmad_anomaly_index(d.mask_l1)
            targets += [i for i, x in enumerate(idx.tolist()) if x > 2]
            best = max(best, float(idx.max()))
        return bool(targets), sorted(set(targets)), 1 - math.exp(-best / 2)
    if rule == "karm_ratio":
        best, targets = 0.0, []
        for d in dets:
            s = sorted(range(len(d.mask_l1)), key=lambda i: d.mask_l1[i])
            ratio = d.mask_l1[s[1]] / max(d.mask_l1[s[0]], 1e-9)
            if ratio > 2:
                targets.append(s[0])
            best = max(best, ratio)
        return bool(targets), sorted(set(targets)), 1 - 1 / best
    raise ValueError(rule)


def roc_auc(pos, neg):
    if not pos or not neg:
        return float("nan")
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def fpr_at_tpr(pos, neg, tpr=0.95):
    if not pos or not neg:
        return float("nan")
    cut = sorted(pos)[int(math.floor((1 - tpr) * len(pos)))]
    return sum(n >= cut for n in neg) / len(neg)


def cross_entropy(pos, neg):
    eps = 1e-6
    terms = [-math.log(min(max(p, eps), 1 - eps)) for p in pos] + [-math.log(1 - min(max(n, eps), 1 - eps)) for n in neg]
    return sum(terms) / max(1, len(terms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--methods", default="neural_cleanse,deepinspect")
    parser.add_argument("--rules", default="paper,lower_mad,karm_ratio,log_lower,log_lower_cal,loo,loo_cal")
    parser.add_argument("--per-model", action="store_true",
                        help="also print, per model, each method's target statistic, largest other and threshold")
    parser.add_argument("--per-model-rule", default="loo_scan", choices=sorted(VERDICT_RULES),
                        help="the rule whose evidence --per-model prints")
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--calibration-file", action="append", default=[], metavar="[ARCH=]PATH",
                        help="a scan's cached calibration JSON (~/.cache/poisonguard/calibration/KEY.json) for suspects "
                             "of ARCH (default: every suspect): rules loo_scan, log_lower_scan; repeatable, one per architecture")
    parser.add_argument("--dataset", choices=("mnist5k", "cifar10"), default="mnist5k")
    parser.add_argument("--clean-fraction", type=float, default=0.05,
                        help="judge the scans made with this share of clean data (detect_benchmark.py --clean-fraction)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    rows = [json.loads(line) for line in (args.cache / "scans.jsonl").read_text().splitlines()]
    wanted = "" if args.clean_fraction == 0.05 else f"clean_fraction={args.clean_fraction}"
    rows = [r for r in rows if r.get("options", "") == wanted and r.get("dataset", "mnist5k") == args.dataset]
    for r in rows:
        seed = int(r["model"].rsplit("seed", 1)[1])
        r.setdefault("split", "tuning" if seed in TUNING_SEEDS else "report")
        if r["kind"] == "clean":
            r.setdefault("arch", r["model"].split("_seed")[0].removeprefix("clean_"))
    models = sorted({r["model"] for r in rows if all(any(q["model"] == r["model"] and q["method"] == m for q in rows)
                                                      for m in methods)})
    cals = {arch: ZooCalibration(rows, arch) for arch in ("mnist_cnn", "lenet5", "resnet20")}
    scan_cals = scan_calibrations(args.calibration_file)
    if not scan_cals:
        args.rules = ",".join(r for r in args.rules.split(",") if not r.endswith("_scan"))
    print(f"methods {methods}; models with every method scanned: {len(models)}")
    print(f"{'rule':14s} {'split':7s} {'found':>9s} {'clean flagged':>13s} {'AUC':>6s} {'FPR@95':>7s} {'CE':>6s}  per family (found/n)")
    per_model: list[str] = []
    for rule in args.rules.split(","):
        for split in ("tuning", "report"):
            pos, neg, found, n_bad, flagged, n_clean, fam = [], [], 0, 0, 0, 0, {}
            for name in models:
                mine = [r for r in rows if r["model"] == name and r["method"] in methods]
                if mine[0]["split"] != split:
                    continue
                arch = mine[0].get("arch") or "mnist_cnn"
                if rule.endswith("_scan"):
                    cal = scan_cals.get(arch, scan_cals.get(None))
                    if cal is None:
                        continue
                elif rule.endswith("_cal") and split == "tuning" and mine[0]["kind"] == "clean":
                    # A tuning clean model is one of the references: judge it against the others.
                    others = [r for r in rows if r["model"] != name]
                    cal = ZooCalibration(others, arch)
                else:
                    cal = cals[arch]
                bad, targets, score = verdict_of(rule, [detection(r) for r in mine], cal, args.fpr)
                if args.per_model and rule == args.per_model_rule:
                    per_model.append(model_line(name, mine, rule_verdict(rule, [detection(r) for r in mine], cal, args.fpr),
                                                bad, targets))
                kind, target = mine[0]["kind"], mine[0]["target"]
                if kind == "clean":
                    n_clean += 1
                    flagged += bad
                    neg.append(score)
                else:
                    n_bad += 1
                    hit = bad and target in targets
                    found += hit
                    pos.append(score)
                    f = fam.setdefault(kind, [0, 0])
                    f[0] += hit
                    f[1] += 1
            if not n_bad and not n_clean:
                continue
            fams = " ".join(f"{k}:{v[0]}/{v[1]}" for k, v in sorted(fam.items()))
            print(f"{rule:14s} {split:7s} {found:4d}/{n_bad:<4d} {flagged:6d}/{n_clean:<6d} {roc_auc(pos, neg):6.3f} "
                  f"{fpr_at_tpr(pos, neg):7.3f} {cross_entropy(pos, neg):6.3f}  {fams}")

    if per_model:
        print(f"\nper model ({args.per_model_rule}, fpr {args.fpr}): per method target index / largest other / threshold")
        print("\n".join(per_model))


def scan_calibrations(items: list[str]) -> dict:
    """{architecture or None (every suspect): Calibration} from `[ARCH=]PATH` arguments."""
    from poisonguard.detect.calibration import Calibration

    out = {}
    for item in items:
        arch, _, path = item.rpartition("=")
        cal = Calibration.from_json(Path(path).read_text())
        out[arch or None] = cal
        print(f"scan calibration for {arch or 'every suspect'}: {cal.n_models} {cal.architecture} references on "
              f"{cal.clean_images} clean images, methods {sorted(cal.methods)}, {cal.seconds} s")
    return out


def model_line(name: str, mine: list[dict], v, bad: bool, targets: list[int]) -> str:
    """One model's evidence under verdict `v`: per method the target's index, the largest other class's, the threshold."""
    target = mine[0]["target"]
    parts = []
    for method in v.methods:
        rows = v.method_rows(method)
        t = next((e["statistic"] for e in rows if e["class"] == target), None)
        other = max(e["statistic"] for e in rows if e["class"] != target)
        parts.append(f"{method[:6]} {'-' if t is None else f'{t:5.1f}'}/{other:5.1f}/{rows[0]['threshold']:4.1f}")
    ok = (bad and target in targets) if target is not None else not bad
    return (f"{mine[0]['split']:6s} {name:30s} target={target!s:4s} {'ok  ' if ok else 'MISS'} "
            f"flagged={targets}  " + "  ".join(parts))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
