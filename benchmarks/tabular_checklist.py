"""Issue 19, tables: the checklist on two real tables that ship offline inside statsmodels.

For each table (fair: 6,366 rows, 18 features; randhie: 20,190 rows, 9 features) and report
seed (1, 2, 3; seed 0 was used while choosing defaults), with the library's defaults:

- attack: Tabdoor's trigger on 3 seeded numeric features set to their observed maximum, 5% of
  the training rows poisoned (dirty label, target = the minority class); the built-in `mlp`,
  10 epochs; a clean `mlp` of another seed beside it.
- scan: the tabular default (reference_contrast, 8 clean references trained on 25% of the
  training part, calibrated verdict at FPR 0.05) on the backdoored and the clean model.
- sanitize: the default (SCAn + spectral signatures on the mlp's representations) on the
  poisoned training part: TPR over the poisoned rows, FPR over the clean ones.
- repair: the tabular default (retrain on the 25% clean part) on the backdoored model.
- filter (run time, no goal in the issue): the Mahalanobis filter fitted on the same clean part
  at FRR 1% (filter's default) and 5%; the test rows are the incoming inputs: FRR measured on
  them, and the share of them rejected once the trigger is stamped (non-target rows), overall and
  among those the backdoored model sends to the target.

More than two classes (`--tables digits,fair_rating,randhie_visits,anes96_party`; `MULTICLASS`
below): the scan's verdict then had the index across classes, not the two-class one. Tuning
(looked at in session 13): scikit-learn's `digits` (1,797 rows, 64 pixel columns, 10 classes)
and fair with `rate_marriage` (5 classes) as the label. Held out: randhie's visits in four bins
and anes96's party identification (944 rows, 7 classes). The target is the minority class of
the training part.

Goals (issue 19): clean accuracy within 2 points and ASR >= 90%; scan finds the target on
>= 5 of 6 backdoored models and flags <= 1 of 6 clean ones; sanitize TPR >= 90% at FPR <= 5%;
repair ASR <= 5% losing <= 3 points. Results are cached per case in --results (resumable):

    OMP_NUM_THREADS=1 python benchmarks/tabular_checklist.py --tables fair --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET = {"fair": 1, "randhie": 0}  # the minority class ("yes" affair; "no" visit)
GOALS = "clean acc within 2 pts, ASR >= 90%; scan >= 5/6 found, <= 1/6 clean flagged; sanitize TPR >= 90% at FPR <= 5%; repair ASR <= 5%, loss <= 3 pts"


def export_multiclass(table: str, folder: Path) -> tuple[Path, str]:
    """The tables of more than two classes, written as CSV (`MULTICLASS` says which are held out)."""
    folder.mkdir(parents=True, exist_ok=True)
    header, rows, label, meta = MULTICLASS[table][1]()
    if meta:
        (folder / "metadata.json").write_text(json.dumps(meta))
    out = folder / f"{table}.csv"
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return out, label


def _statsmodels_rows(name: str, delimiter: str = ",") -> tuple[list[str], list[list[str]]]:
    from poisonguard.data.example_tables import _clean, _source

    with open(_source("fair").parent.parent / name, newline="", encoding="utf-8") as handle:
        source = [r for r in csv.reader(handle, delimiter=delimiter) if r]
    return [h.strip().strip("'") for h in source[0]], [[_clean(c.strip()) for c in r] for r in source[1:]]


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return ([f"p{i}" for i in range(64)] + ["digit"],
            [[int(v) for v in x] + [int(y)] for x, y in zip(digits.data, digits.target)], "digit", None)


def _relabel(name: str, source: str, label: str, rule, categorical=(), delimiter=","):
    header, rows = _statsmodels_rows(name, delimiter)
    i = header.index(source)
    keep = [j for j in range(len(header)) if j != i]
    return ([header[j] for j in keep] + [label], [[r[j] for j in keep] + [rule(r[i])] for r in rows], label,
            {"categorical": list(categorical)} if categorical else None)


def _visits(cell: str) -> str:
    n = float(cell)
    return "0" if n == 0 else "1-2" if n <= 2 else "3-6" if n <= 6 else "7+"


# name: (held out?, rows). Tuning (looked at while choosing the multi-class rule, session 13):
# digits (scikit-learn, 1,797 rows, 64 pixel columns, 10 classes) and fair with the marriage
# rating (1-5) as label. Held out, fixed before any scan of them was run: randhie with outpatient
# visits in four bins (0, 1-2, 3-6, 7+) and anes96 (944 rows) with party identification (7 classes).
MULTICLASS = {
    "digits": (False, _digits),
    "fair_rating": (False, lambda: _relabel("fair/fair.csv", "rate_marriage", "rating", str,
                                            ("occupation", "occupation_husb"))),
    "randhie_visits": (True, lambda: _relabel("randhie/randhie.csv", "mdvis", "visits", _visits)),
    "anes96_party": (True, lambda: _relabel("anes96/anes96.csv", "PID", "party", str, delimiter="\t")),
}


def run_case(table: str, seed: int, folder: Path) -> dict:
    from poisonguard.attacks import poison_dataset
    from poisonguard.attacks.tabular import tabular_trigger
    from poisonguard.data import load_data, per_class_subset
    from poisonguard.data.example_tables import export_table
    from poisonguard.detect.calibration import calibrate, train_references
    from poisonguard.detect.verdict import TABULAR_METHODS, scan_verdict
    from poisonguard.models import build_model
    from poisonguard.repair import REPAIRERS
    from poisonguard.sanitize import Sanitizer
    from poisonguard.metrics import predict
    from poisonguard.sanitize.mahalanobis import MahalanobisFilter
    from poisonguard.sanitize.run import TABULAR_METHODS as SANITIZE_METHODS
    from poisonguard.train import evaluate, fit

    path, label = export_table(table, folder) if table in TARGET else export_multiclass(table, folder)
    splits = load_data(str(path), label_column=label, seed=seed)
    target = TARGET.get(table, int(np.bincount(splits.train.y.numpy()).argmin()))
    trigger = tabular_trigger(splits.train, target=target, seed=seed)
    poisoned = poison_dataset(splits.train, trigger, rate=0.05, seed=seed)
    times = {}

    def train(data, s):
        model = build_model("mlp", num_classes=splits.num_classes, input_shape=splits.input_shape, seed=s)
        return fit(model, data, epochs=10, batch_size=64, seed=s, device="cpu")

    t = time.perf_counter()
    backdoored, clean_model = train(poisoned.data, seed), train(splits.train, 100 + seed)
    times["train_two_models"] = time.perf_counter() - t
    ev_bd = evaluate(backdoored, splits.test, trigger)
    ev_clean = evaluate(clean_model, splits.test, trigger)

    t = time.perf_counter()
    clean = per_class_subset(splits.train, fraction=0.25, seed=seed)
    refs = train_references(clean, architecture="mlp", n_models=8, seed=seed, device="cpu")
    cal = calibrate(clean, architecture="mlp", source="benchmark", methods=list(TABULAR_METHODS), n_models=8,
                    seed=seed, device="cpu", models=refs, use_cache=False)
    times["calibration"] = time.perf_counter() - t
    scans = {}
    for name, model in (("backdoored", backdoored), ("clean", clean_model)):
        t = time.perf_counter()
        v = scan_verdict(model, clean, methods=list(TABULAR_METHODS), calibration=cal, references=refs, seed=seed,
                         device="cpu")
        times[f"scan_{name}"] = time.perf_counter() - t
        det = v.detections[0]
        scans[name] = {"backdoored": v.backdoored, "targets": list(v.targets), "sizes": list(det.mask_l1),
                       "statistic": [e["statistic"] for e in v.evidence], "threshold": v.evidence[0]["threshold"]}

    t = time.perf_counter()
    result = Sanitizer(arch="mlp", methods=SANITIZE_METHODS, seed=seed, device="cpu").run(poisoned.data)
    times["sanitize"] = time.perf_counter() - t
    truth = np.zeros(len(poisoned.data), bool)
    truth[poisoned.poisoned_index.numpy()] = True
    flagged = np.zeros(len(poisoned.data), bool)
    flagged[list(result.flagged)] = True
    t = time.perf_counter()
    clean_verdict = Sanitizer(arch="mlp", methods=SANITIZE_METHODS, seed=seed, device="cpu").run(splits.train).verdict
    times["sanitize_clean"] = time.perf_counter() - t

    t = time.perf_counter()
    filtered = {}
    for frr in (0.01, 0.05):  # the filter's default and a looser rate; the test rows are the incoming ones
        maha = MahalanobisFilter(frr=frr, seed=seed).fit(backdoored, clean)
        keep = splits.test.y != target
        stamped = trigger.apply(splits.test.x[keep])
        sent = predict(backdoored, stamped) == target
        rejected = maha.reject(backdoored, stamped)
        filtered[str(frr)] = {"frr_measured": float(maha.reject(backdoored, splits.test.x).mean()),
                              "tdr_triggered": float(rejected.mean()),
                              "tdr_sent_to_target": float(rejected[sent.numpy()].mean()) if sent.any() else None}
    times["filter"] = time.perf_counter() - t

    t = time.perf_counter()
    rep = REPAIRERS.get("retrain")(seed=seed, device="cpu").repair(backdoored, clean, trigger=trigger, test=splits.test)
    times["repair"] = time.perf_counter() - t
    return {
        "table": table, "seed": seed, "rows": len(splits.train) + len(splits.test), "features": splits.input_shape[0],
        "target": target, "trigger_features": [int(i) for i in np.flatnonzero(trigger.mask.numpy())],
        "clean_accuracy_clean": ev_clean.clean_accuracy, "clean_accuracy_backdoored": ev_bd.clean_accuracy,
        "asr_backdoored": ev_bd.attack_success_rate, "asr_clean": ev_clean.attack_success_rate,
        "scan": scans, "scan_found": scans["backdoored"]["backdoored"] and scans["backdoored"]["targets"] == [target],
        "scan_clean_flagged": scans["clean"]["backdoored"],
        "sanitize": {"verdict": result.verdict, "targets": list(result.targets),
                     "tpr": float(flagged[truth].mean()), "fpr": float(flagged[~truth].mean()),
                     "clean_table_verdict": clean_verdict},
        "filter": filtered,
        "repair": {"before_accuracy": rep.before.clean_accuracy, "after_accuracy": rep.after.clean_accuracy,
                   "before_asr": rep.before.attack_success_rate, "after_asr": rep.after.attack_success_rate},
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }


def summarise(cases: list[dict]) -> list[str]:
    lines = [f"goals: {GOALS}", "",
             "| table | seed | clean acc (clean / backdoored) | ASR | scan bd: found | scan clean: flagged | "
             "sanitize TPR / FPR | clean table | repair acc (before -> after) | repair ASR | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        r, s = c["repair"], c["sanitize"]
        lines.append(f"| {c['table']} | {c['seed']} | {c['clean_accuracy_clean']:.3f} / {c['clean_accuracy_backdoored']:.3f} "
                     f"| {c['asr_backdoored']:.3f} | {c['scan_found']} | {c['scan_clean_flagged']} "
                     f"| {s['tpr']:.3f} / {s['fpr']:.4f} | {s['clean_table_verdict']} "
                     f"| {r['before_accuracy']:.3f} -> {r['after_accuracy']:.3f} | {r['after_asr']:.3f} "
                     f"| {sum(c['seconds'].values()):.0f} |")
    n = len(cases)
    if n:
        drop = [c["clean_accuracy_clean"] - c["clean_accuracy_backdoored"] for c in cases]
        lines += ["",
                  f"attack: ASR >= 90% on {sum(c['asr_backdoored'] >= 0.9 for c in cases)}/{n}; clean-accuracy drop "
                  f"<= 2 pts on {sum(d <= 0.02 for d in drop)}/{n} (largest {100 * max(drop):.1f} pts)",
                  f"scan: target found on {sum(c['scan_found'] for c in cases)}/{n} backdoored; clean flagged "
                  f"{sum(c['scan_clean_flagged'] for c in cases)}/{n}",
                  f"sanitize: TPR >= 90% and FPR <= 5% on {sum(c['sanitize']['tpr'] >= 0.9 and c['sanitize']['fpr'] <= 0.05 for c in cases)}/{n}; "
                  f"clean tables called clean {sum(c['sanitize']['clean_table_verdict'] == 'clean' for c in cases)}/{n}",
                  f"repair: ASR <= 5% on {sum(c['repair']['after_asr'] <= 0.05 for c in cases)}/{n}; loss <= 3 pts on "
                  f"{sum(c['repair']['before_accuracy'] - c['repair']['after_accuracy'] <= 0.03 for c in cases)}/{n}"]
        lines += filter_lines([c for c in cases if "filter" in c])
    return lines


def filter_lines(cases: list[dict]) -> list[str]:
    lines = ["", "| table | seed | filter FRR 1%: measured FRR | triggered rows rejected | of those sent to the target "
                 "| FRR 5%: measured | rejected | of those sent |", "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        cells = [f"{f['frr_measured']:.3f} | {f['tdr_triggered']:.3f} | "
                 + ("-" if f["tdr_sent_to_target"] is None else f"{f['tdr_sent_to_target']:.3f}")
                 for f in c["filter"].values()]
        lines.append(f"| {c['table']} | {c['seed']} | " + " | ".join(cells) + " |")
    return lines if cases else []


def run_resumable(results: str, tables: str, seeds: str, run, *, progress=None) -> list[dict]:
    """Every record in `results` (JSON) plus `run(table, seed, folder)`'s records (a list) for each
    (table, seed) of the comma-separated `tables` and `seeds` not yet there. The file is rewritten
    after each case, so a stopped run resumes; `progress(record)` gives a line per new record."""
    path = Path(results)
    records = json.loads(path.read_text()) if path.is_file() else []
    done = {(r["table"], r["seed"]) for r in records}
    with tempfile.TemporaryDirectory() as tmp:
        for table in filter(None, tables.split(",")):
            for seed in (int(s) for s in seeds.split(",")):
                if (table, seed) in done:
                    continue
                new = run(table, seed, Path(tmp) / f"{table}-{seed}")
                records += new
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(records, indent=1))
                for record in new if progress else ():
                    print(progress(record), flush=True)
                if not progress:
                    print(f"{table} seed {seed} done", flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="fair,randhie")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--results", default="benchmarks/results/issue-19-tabular.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    cases = run_resumable(args.results, args.tables, args.seeds, lambda table, seed, folder: [run_case(table, seed, folder)],
                          progress=lambda case: json.dumps({k: case[k] for k in ("table", "seed", "asr_backdoored",
                                                                                 "scan_found", "scan_clean_flagged",
                                                                                 "seconds")}))
    cases.sort(key=lambda c: (c["table"], c["seed"]))
    groups = {"two classes": [c for c in cases if c["table"] in TARGET],
              "more classes, tuning": [c for c in cases if c["table"] in MULTICLASS and not MULTICLASS[c["table"]][0]],
              "more classes, held out": [c for c in cases if c["table"] in MULTICLASS and MULTICLASS[c["table"]][0]]}
    for name, group in groups.items():
        if group:
            print(f"\n## {name}\n" + "\n".join(summarise(group)))


if __name__ == "__main__":
    main()
