"""Detection quality of Neural Cleanse, TABOR and data-free DeepInspect over the MNIST 5k zoo.

Scans every model of benchmarks/detect_zoo.py (building missing ones first unless
--no-build) with each method's defaults and prints, per method: the share of backdoored
models whose true target is flagged (detection rate), the share of clean models flagged at
all (false-flag rate), and the ROC-AUC of "largest small-side anomaly index" as a
backdoor score. Results are appended to CACHE/scans.jsonl, so an interrupted run resumes.

    PYTHONPATH=src python benchmarks/detect_benchmark.py [--methods neural_cleanse,tabor,deepinspect]
        [--quick] [--no-build] [--limit N] [--dataset cifar10] [--clean-fraction 0.01]

Rows carry the clean share they were scanned with (`clean_fraction`, default 0.05), so a
1%-data run sits beside the 5% one in the same log.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detect_zoo import DEFAULT_CACHE, build_zoo, parse_seeds, zoo_specs  # noqa: E402

from poisonguard.data import load_data  # noqa: E402
from poisonguard.detect.scan import clean_share  # noqa: E402
from poisonguard.detect import DETECTORS  # noqa: E402
from poisonguard.utils import parse_options  # noqa: E402
from poisonguard.models import load_model  # noqa: E402


def score(det: dict) -> float:
    """Backdoor score of one scan: the largest anomaly index among classes below the median."""
    sizes = det["mask_l1"]
    med = sorted(sizes)[len(sizes) // 2]
    return max([i for i, s in zip(det["anomaly_index"], sizes) if s <= med] or [0.0])


def roc_auc(pos: list[float], neg: list[float]) -> float:
    """Probability that a backdoored model scores above a clean one (ties count half)."""
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def summarise(rows: list[dict], methods: list[str]) -> None:
    print(f"{'method':16s} {'kind':8s} {'models':>6s} {'target found':>12s} {'flagged':>8s}")
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        for kind in ("patch", "dispersed", "blended", "wanet", "filter", "clean"):
            part = [r for r in mine if r["kind"] == kind]
            if not part:
                continue
            found = sum(r["target"] in r["flagged_classes"] for r in part) if kind != "clean" else 0
            flagged = sum(bool(r["flagged_classes"]) for r in part)
            print(f"{method:16s} {kind:8s} {len(part):6d} {found if kind != 'clean' else '-':>12} {flagged:8d}")
        bad = [r for r in mine if r["kind"] != "clean"]
        clean = [r for r in mine if r["kind"] == "clean"]
        rate = sum(r["target"] in r["flagged_classes"] for r in bad) / max(1, len(bad))
        false = sum(bool(r["flagged_classes"]) for r in clean) / max(1, len(clean))
        auc = roc_auc([r["score"] for r in bad], [r["score"] for r in clean])
        secs = sum(r["seconds"] for r in mine) / max(1, len(mine))
        print(f"==> {method}: detection rate {rate:.0%} ({len(bad)} backdoored), false-flag rate {false:.0%} "
              f"({len(clean)} clean), ROC-AUC {auc:.3f}, mean {secs:.1f} s per scan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="neural_cleanse,tabor,deepinspect")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--quick", action="store_true", help="one seed of each attack, two clean models")
    parser.add_argument("--no-build", action="store_true", help="scan only models already in the cache")
    parser.add_argument("--limit", type=int, default=None, help="scan at most this many models")
    parser.add_argument("--skip", default=None, help="skip models whose name contains this text (e.g. resnet20)")
    parser.add_argument("--kinds", default=None, help="only these families, e.g. patch,dispersed,clean")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=parse_seeds, default=None, help="zoo seeds (default 0,1,2; others to tune on)")
    parser.add_argument("--dataset", choices=("mnist5k", "cifar10"), default="mnist5k")
    parser.add_argument("--clean-fraction", type=float, default=0.05,
                        help="share of the training part given to the detectors as clean data (scan's default 0.05)")
    parser.add_argument("--option", action="append", metavar="NAME=VALUE",
                        help="detector hyperparameter for every method, e.g. steps_per_epoch=28 (repeatable)")
    args = parser.parse_args()
    options = parse_options(args.option)
    tag = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    torch.set_num_threads(args.threads)
    methods = [DETECTORS.normalise(m) for m in args.methods.split(",")]
    if args.no_build:
        specs = [{**s, "path": str(args.cache / s["name"] / "model.pt")}
                 for s in zoo_specs(args.seeds, args.quick, args.dataset)]
        specs = [s for s in specs if (args.cache / s["name"] / "report.json").is_file()]
    else:
        specs = build_zoo(args.cache, args.seeds, args.quick, args.dataset)
    if args.skip:
        specs = [s for s in specs if args.skip not in s["name"]]
    if args.kinds:
        specs = [s for s in specs if s["kind"] in args.kinds.split(",")]
    specs = specs[: args.limit]
    splits = load_data(args.dataset)
    clean, _ = clean_share(splits, fraction=args.clean_fraction, seed=0)  # capped as `poisonguard scan` caps it
    if args.clean_fraction != 0.05:  # the 5% rows keep their old key (no tag)
        tag = ",".join(filter(None, [tag, f"clean_fraction={args.clean_fraction}"]))
    log_path = args.cache / "scans.jsonl"
    done = {}
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["model"], r["method"], r.get("options", ""))] = r
    for spec in specs:
        model = load_model(spec["path"]).model
        for method in methods:
            if (spec["name"], method, tag) in done:
                continue
            start = time.perf_counter()
            det = DETECTORS.get(method)(seed=0, device="cpu", **options)
            det = det.detect(model, None, input_shape=splits.input_shape) if method == "deepinspect" else det.detect(model, clean)
            d = det.to_dict()
            row = {"model": spec["name"], "kind": spec["kind"], "target": spec["target"], "method": method,
                   "split": spec["split"], "arch": spec.get("arch", "mnist_cnn"),
                   "flagged_classes": d["flagged_classes"], "anomaly_index": d["anomaly_index"],
                   "mask_l1": d["mask_l1"], "score": score(d), "seconds": time.perf_counter() - start,
                   "dataset": args.dataset, "clean_fraction": args.clean_fraction, "clean_images": len(clean)}
            if tag:
                row["options"] = tag
            done[(spec["name"], method, tag)] = row
            with open(log_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(f"{spec['name']:36s} {method:15s} target={spec['target']!s:4s} flagged={row['flagged_classes']} "
                  f"score={row['score']:.2f} {row['seconds']:.0f}s", flush=True)
    names = {s["name"] for s in specs}
    summarise([r for r in done.values() if r["model"] in names and r.get("options", "") == tag], methods)


if __name__ == "__main__":
    main()
