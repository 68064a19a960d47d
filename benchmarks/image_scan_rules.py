"""Issue 16: decision rules re-judged on the recorded scans of user-written image architectures.

`image_scan_architectures.py` records, per suspect, each method's per-class trigger sizes and
those of the stand-in's clean references (`sizes`, `reference_sizes`). The verdict reads only
these numbers, so other rules can be compared on the same scans without scanning again:

- `references only`: the verdict up to session 18, the stand-in references' per-class mean log
  sizes subtracted (calibrated; `verdict.judge` with `calibration.fit_null`);
- `own sizes`: the suspect's own sizes, uncalibrated priors (`judge` without a calibration,
  as `--calibration none`);
- `references + own sizes` (the default of session 19): each method judged by the two tests
  above, a class's p-value min(1, 2 min(p, p')), a union bound;
- `default` (since session 20, `verdict.stand_in_rows`): the own-sizes test for Neural Cleanse
  (and TABOR) only, plus Neural Cleanse's smallest trigger gap (`detect/gap.py`): NC three tests
  at a third of the rate each, DeepInspect and FeatureRE against the references alone;
- `ratio > 2` (diagnostic, uncalibrated): Neural Cleanse alone, the smallest class flagged when
  the second smallest mask is more than twice its size (the `karm_ratio` rule of
  `detect_verdict.py`, after K-Arm's ratio test; Shen et al., ICML 2021).

    PYTHONPATH=src python benchmarks/image_scan_rules.py RESULTS.json --seeds 4,5,6 --seeds 7,8,9
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from unittest import mock

from poisonguard.detect import gap, verdict

from poisonguard.detect.calibration import Calibration, fit_null
from poisonguard.detect.verdict import judge
from poisonguard.results import Detection

FPR = 0.05


def detections(sizes: dict[str, list[float]]) -> list[Detection]:
    return [Detection(method=m, backdoored=False, flagged_classes=(), anomaly_index=tuple(0.0 for _ in s), seconds=0.0,
                      mask_l1=tuple(s)) for m, s in sizes.items()]


def calibration(reference_sizes: dict[str, list[list[float]]], *, stand_in: bool) -> Calibration:
    n = len(next(iter(reference_sizes.values())))
    return Calibration(key="", architecture="stand-in", source="recorded", n_models=n, clean_images=0, seconds=0.0,
                       methods={m: fit_null(rows) for m, rows in reference_sizes.items()}, stand_in=stand_in)


def targets(rule: str, sizes: dict, reference_sizes: dict, fpr: float = FPR) -> set[int]:
    if rule in ("references only", "references + own sizes", "default"):
        cal = calibration(reference_sizes, stand_in=rule != "references only")
        with contextlib.ExitStack() as session_19:
            if rule != "default":  # session 19's rule: no gap test, the own-sizes test for every method
                session_19.enter_context(mock.patch.dict(gap.PRIORS, clear=True))
                session_19.enter_context(mock.patch.object(verdict, "OWN_SIZES_METHODS", tuple(sizes)))
            return set(judge(detections(sizes), fpr=fpr, calibration=cal).targets)
    if rule == "own sizes":
        return set(judge(detections(sizes), fpr=fpr).targets)
    if rule == "ratio > 2":
        nc = sizes["neural_cleanse"]
        order = sorted(range(len(nc)), key=nc.__getitem__)
        return {order[0]} if nc[order[1]] > 2 * nc[order[0]] else set()
    raise ValueError(rule)


RULES = ("references only", "own sizes", "references + own sizes", "default", "ratio > 2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--seeds", action="append", required=True, help="a group of seeds, e.g. 4,5,6 (repeatable)")
    parser.add_argument("--references", default="builtin")
    args = parser.parse_args()
    records = json.loads(args.results.read_text())
    print("| rule | seeds | found | clean flagged | per suspect (arch seed: backdoored's targets / clean's) |")
    print("|---|---|---|---|---|")
    for rule in RULES:
        for group in args.seeds:
            seeds = {int(s) for s in group.split(",")}
            rows = [r for r in records if r["seed"] in seeds and args.references in r["backdoored"]]
            found = flagged = 0
            cells = []
            for r in rows:
                bd, cl = r["backdoored"][args.references], r["clean"][args.references]
                got = targets(rule, bd["sizes"], bd["reference_sizes"])
                clean = targets(rule, cl["sizes"], cl["reference_sizes"])
                found += got == {r["target"]}
                flagged += bool(clean)
                cells.append(f"{r['arch']} {r['seed']}: {sorted(got)} / {sorted(clean)}")
            print(f"| {rule} | {group} | {found}/{len(rows)} | {flagged}/{len(rows)} | {'; '.join(cells)} |")


if __name__ == "__main__":
    main()
