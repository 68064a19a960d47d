"""Issue 16, "recorded, not yet goals": the default scan on all-to-all and source-specific backdoors.

Neither kind has one target class that every input can be pushed to with a small trigger,
which is what pixel-mask inversion looks for, so these rows say what a user gets today:

  - all-to-all: BadNets 4x4 patch bottom-right, label y -> (y + 1) mod 10 (`poisonguard attack
    badnets --target all`), 10% of the training images.
  - source-specific (TaCT, Tang et al., USENIX Security 2021, the attack SCAn was built against):
    40% of one source class's training images get the 4x4 patch and the target label; as many
    images of the other classes get the same patch and keep their own labels (the "cover"), so
    the patch sends only the source class to the target.

MNIST 5k, `mnist_cnn`, 6 epochs (as the detection zoo), report seeds 0-2 (nothing here was
tuned; no setting changed after a row was seen). Each model is scanned as a user would:
`poisonguard scan MODEL --data mnist5k` with every default (the verdict calibrated on
mnist_cnn references, cached after the first). Found: verdict backdoored; for source-specific
also the target among the flagged classes. Models and reports are cached under --cache.

    PYTHONPATH=src python benchmarks/detect_recorded.py [--seeds 0,1,2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from poisonguard import cli
from poisonguard.attacks.patches import badnets_trigger
from poisonguard.data import load_data
from poisonguard.metrics import accuracy, attack_success_rate
from poisonguard.models import build_model, save_model
from poisonguard.train import fit

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 6
SOURCE_SHARE = 0.4


def source_specific(seed: int, folder: Path) -> dict:
    """Train a TaCT-poisoned mnist_cnn; return its clean accuracy and the two attack rates."""
    splits = load_data("mnist5k")
    source, target = (3 * seed + 1) % 10, (3 * seed + 6) % 10
    trigger = badnets_trigger(splits.input_shape, target=target, size=4)
    rng = np.random.default_rng(seed)
    y = splits.train.y.numpy()
    poison = rng.choice(np.flatnonzero(y == source), size=int(SOURCE_SHARE * (y == source).sum()), replace=False)
    cover = rng.choice(np.flatnonzero((y != source) & (y != target)), size=len(poison), replace=False)
    x, labels = splits.train.x.clone(), splits.train.y.clone()
    stamped = np.concatenate([poison, cover])
    x[stamped] = trigger.apply(x[stamped])
    labels[poison] = target
    model = build_model("mnist_cnn", num_classes=10, input_shape=splits.input_shape, seed=seed)
    model = fit(model, splits.train.with_(x=x, y=labels), epochs=EPOCHS, batch_size=64, seed=seed, device="cpu")
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, folder / "model.pt", arch="mnist_cnn", classes=splits.classes, input_shape=splits.input_shape)
    test, from_source = splits.test, splits.test.y == source
    # The attack's success on the source class, and on every other class (where it should not work).
    return {"source": source, "target": target, "clean_accuracy": accuracy(model, test),
            "asr_source": attack_success_rate(model, test.subset(from_source.nonzero().flatten()), trigger)[0],
            "asr_other_classes": attack_success_rate(model, test.subset((~from_source).nonzero().flatten()), trigger)[0]}


def all_to_all(seed: int, folder: Path) -> dict:
    code = cli.main(["attack", "badnets", "--patch-size", "4", "--position", "bottom-right", "--target", "all",
                     "--epochs", str(EPOCHS), "--seed", str(seed), "--data", "mnist5k", "--out", str(folder), "--quiet"])
    if code != 0:
        raise RuntimeError(f"attack failed with exit code {code}")
    ev = json.loads((folder / "report.json").read_text())["evaluation"]
    return {"target": "all (y -> y + 1)", "clean_accuracy": ev["clean_accuracy"], "asr": ev["attack_success_rate"]}


def scan(folder: Path) -> dict:
    out = folder / "scan"
    start = time.perf_counter()
    code = cli.main(["scan", str(folder / "model.pt"), "--data", "mnist5k", "--out", str(out), "--exit-zero",
                     "--force", "--quiet"])
    if code != 0:
        raise RuntimeError(f"scan failed with exit code {code}")
    verdict = json.loads((out / "report.json").read_text())["verdict"]
    return {"backdoored": verdict["backdoored"], "targets": verdict["targets"], "score": verdict["score"],
            "calibrated": verdict.get("calibrated"), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "detect-recorded")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':28s} {'attack (clean acc, ASR)':48s} verdict")
    for seed in (int(s) for s in args.seeds.split(",")):
        for kind, build in (("all_to_all", all_to_all), ("source_specific", source_specific)):
            folder = args.cache / f"{kind}_seed{seed}"
            row_file = folder / "row.json"
            if not row_file.is_file():
                row = {"kind": kind, "seed": seed, "attack": build(seed, folder)}
                row["scan"] = scan(folder)
                row_file.write_text(json.dumps(row))
            row = json.loads(row_file.read_text())
            a, s = row["attack"], row["scan"]
            asr = (f"ASR {a['asr']:.3f}" if "asr" in a else
                   f"source {a['source']} -> {a['target']}: ASR {a['asr_source']:.3f}, other classes {a['asr_other_classes']:.3f}")
            found = s["backdoored"] and (kind == "all_to_all" or a["target"] in s["targets"])
            print(f"{folder.name:28s} acc {a['clean_accuracy']:.3f}, {asr:36s} "
                  f"{'backdoored' if s['backdoored'] else 'clean'} {s['targets']} score {s['score']:.3f} "
                  f"({'found' if found else 'MISSED'}; {s['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
