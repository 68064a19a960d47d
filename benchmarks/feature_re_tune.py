"""Tune FeatureRE's optimisation on TUNING-seed zoo models only (issue 16).

For each configuration (lr, steps, alpha, beta) and each tuning model, runs FeatureRE on the
benchmark's clean data (5% of MNIST 5k's training part) and prints the target's attack
success and feature-mask size, the verdict statistic (log lower-half MAD index, uncalibrated)
of the target and the largest index of any other class. Rows are appended to
CACHE/feature_re_tune.jsonl so a run cut short resumes.

    PYTHONPATH=src python benchmarks/feature_re_tune.py --configs "lr=0.01;lr=0.05;lr=0.1" \
        --models wanet_seed10,blended_seed10,filter_seed10,clean_mnist_cnn_seed20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detect_zoo import DEFAULT_CACHE, TUNING_SEEDS, zoo_specs  # noqa: E402

from poisonguard.data import load_data, per_class_subset  # noqa: E402
from poisonguard.detect.anomaly import log_lower_mad_index  # noqa: E402
from poisonguard.detect.feature_re import FeatureRE  # noqa: E402
from poisonguard.models import load_model  # noqa: E402
from poisonguard.utils import parse_options  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--configs", required=True, help="';'-separated configurations, each 'k=v,k=v'")
    parser.add_argument("--models", required=True, help="comma-separated zoo model names (tuning seeds only)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = {s["name"]: s for s in zoo_specs(TUNING_SEEDS)}
    names = args.models.split(",")
    if not all(n in specs for n in names):
        raise SystemExit(f"only tuning-seed models may be tuned on: {[n for n in names if n not in specs]}")
    clean = per_class_subset(load_data("mnist5k").train, fraction=0.05, seed=0)
    log_path = args.cache / "feature_re_tune.jsonl"
    done = set()
    if log_path.is_file():
        done = {(r["model"], r["config"]) for r in map(json.loads, log_path.read_text().splitlines())}
    for config in args.configs.split(";"):
        options = parse_options([o for o in config.split(",") if o])
        for name in names:
            if (name, config) in done:
                continue
            spec = specs[name]
            model = load_model(str(args.cache / name / "model.pt")).model
            start = time.perf_counter()
            det = FeatureRE(seed=0, device="cpu", **options).detect(model, clean)
            idx = log_lower_mad_index(det.mask_l1).tolist()
            t = spec["target"]
            row = {"model": name, "config": config, "kind": spec["kind"], "target": t, "seconds": time.perf_counter() - start,
                   "sizes": list(det.mask_l1), "success": det.extra["attack_success"], "mask": det.extra["feature_mask_l1"],
                   "index": idx}
            with open(log_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            other = max(v for i, v in enumerate(idx) if i != t) if t is not None else max(idx)
            tgt = f"target {t}: success {row['success'][t]:.2f} mask {row['mask'][t]:.1f} index {idx[t]:.2f}" if t is not None else "clean"
            print(f"{config:28s} {name:28s} {tgt:50s} max other index {other:.2f}  "
                  f"mean success {sum(row['success']) / len(idx):.2f}  {row['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
