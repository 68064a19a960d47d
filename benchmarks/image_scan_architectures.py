"""Issue 16: the image scan's references for a user's own architecture, measured.

`scan` on a weights file needs `--arch`; for a built-in architecture its clean references are
that architecture. For the user's own code (`--arch file.py:build`) or a library's, they were
the built-in `mnist_cnn` (one channel) or `resnet20` (three), standing in. `--references own`
rebuilds the user's architecture instead (parameters re-initialised, the owner's buffers such
as a normalisation kept, batch-norm statistics not), trained by poisonguard's image recipe.

This script measures both on architectures we did not write (`user_image_models.py`: a VGG-style
net with batch norm, a residual net with group norm and SiLU, each with its owner's MNIST
normalisation as buffers), trained by a plain PyTorch loop (Adam 1e-3, 5 epochs, batch 64), as
a user would, on MNIST 5k:

- backdoored: BadNets 3x3 patch (seeds 4 and 6; position by seed) or Blended (ratio 0.15, seed 5),
  10% of the training split relabelled to the target (seed-dependent);
- clean: the same architecture, another seed, clean data.

Each suspect is saved as a state dict and scanned through the command line as a user runs it:
`poisonguard scan model.pt --arch benchmarks/user_image_models.py:ARCH --data mnist5k
[--references own]`, default methods and budget, FPR 0.05. Calibrations are cached under
`--cache` (one for the stand-in, one per architecture for `own`); their time is printed apart.
Nothing was tuned on these seeds; the choice of default follows the figures.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/image_scan_architectures.py --seeds 4,5,6
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import user_image_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
USER_MODELS = Path(user_image_models.__file__).resolve()
POSITIONS = ("bottom-right", "top-left", "center")
REFERENCES = ("builtin", "own")


def target_of(seed: int) -> int:
    return (3 * seed + 1) % 10


def trigger_of(seed: int, shape):
    from poisonguard.attacks import badnets_trigger, blended_trigger

    if seed % 2:
        return "blended", blended_trigger(shape, target=target_of(seed), ratio=0.15, seed=seed)
    return "badnets", badnets_trigger(shape, target=target_of(seed), size=3, position=POSITIONS[seed % 3])


def user_fit(model: nn.Module, data, *, seed: int, epochs: int = 5) -> nn.Module:
    """A plain PyTorch loop, as a user writes it (not poisonguard's `fit`)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(data.x), generator=g)
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x[idx].float()), data.y[idx]).backward()
            opt.step()
    return model.eval()


def scan(model_path: Path, arch: str, references: str, out: Path) -> dict:
    from poisonguard import cli

    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(["scan", str(model_path), "--arch", f"{USER_MODELS}:{arch}", "--data", "mnist5k",
                         "--references", references, "--out", str(out), "--quiet", "--exit-zero", "--device", "cpu"])
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"scan exited {code}")
    line = json.loads(buffer.getvalue().strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    verdict = line["verdict"]
    calibration = (report.get("calibration") or {})
    # Per method, the suspect's per-class trigger sizes and the references' (from the cached
    # calibration): what a decision rule is computed from, so rules can be compared offline.
    sizes = {d["method"]: d["mask_l1"] for d in report.get("detections", [])}
    return {"flagged": bool(verdict["backdoored"]), "targets": list(verdict["targets"]), "score": verdict.get("score"),
            "seconds": round(seconds, 1), "calibration_cached": calibration.get("cached"),
            "calibration_seconds": calibration.get("seconds"), "sizes": sizes,
            "reference_sizes": reference_sizes(calibration.get("key")),
            "references_source": calibration.get("source") or report.get("verdict", {}).get("references")}


def reference_sizes(key: str | None) -> dict | None:
    """Per method, the (R, K) per-class trigger sizes of the calibration's clean references."""
    from poisonguard.detect.calibration import cache_path

    path = cache_path(key) if key else None
    if path is None or not path.is_file():
        return None
    return {m: null["sizes"] for m, null in json.loads(path.read_text())["methods"].items()}


def run_case(arch: str, seed: int, folder: Path, references: tuple[str, ...] = REFERENCES) -> dict:
    from poisonguard.attacks import poison_dataset
    from poisonguard.data import load_data
    from poisonguard.train import evaluate

    splits = load_data("mnist5k", seed=0)
    family, trigger = trigger_of(seed, splits.input_shape)
    poisoned = poison_dataset(splits.train, trigger, rate=0.10, seed=seed).data
    build = getattr(user_image_models, arch)
    record = {"arch": arch, "seed": seed, "family": family, "target": trigger.target}
    for name, data, model_seed in (("backdoored", poisoned, seed), ("clean", splits.train, 100 + seed)):
        torch.manual_seed(model_seed)
        t = time.perf_counter()
        model = user_fit(build(), data, seed=model_seed)
        ev = evaluate(model, splits.test, trigger)
        path = folder / name / "model.pt"
        path.parent.mkdir(parents=True)
        torch.save(model.state_dict(), path)
        row = {"accuracy": round(ev.clean_accuracy, 4), "asr": round(ev.attack_success_rate, 4),
               "train_seconds": round(time.perf_counter() - t, 1)}
        for choice in references:
            row[choice] = scan(path, arch, choice, folder / name / f"scan-{choice}")
        record[name] = row
    return record


def found(r: dict, references: str) -> bool:
    got = r["backdoored"][references]
    return got["flagged"] and got["targets"] == [r["target"]]


def _cells(r: dict, references: str) -> tuple[str, str]:
    """(found, clean flagged) of one row with these references; '-' where they were not run."""
    if references not in r["backdoored"]:
        return "-", "-"
    return (f"{'yes' if found(r, references) else 'NO'} {r['backdoored'][references]['targets']}",
            "FLAGGED" if r["clean"][references]["flagged"] else "no")


def summarise(records: list[dict]) -> list[str]:
    lines = ["| arch | seed | trigger (target) | backdoored acc / ASR | found: stand-in / own | "
             "clean acc | clean flagged: stand-in / own |", "|---|---|---|---|---|---|---|"]
    for r in records:
        bd, cl = r["backdoored"], r["clean"]
        (fb, cb), (fo, co) = _cells(r, "builtin"), _cells(r, "own")
        lines.append(f"| {r['arch']} | {r['seed']} | {r['family']} ({r['target']}) | {bd['accuracy']:.3f} / "
                     f"{bd['asr']:.3f} | {fb} / {fo} | {cl['accuracy']:.3f} | {cb} / {co} |")
    for references, words in (("builtin", "built-in stand-in (default)"), ("own", "own architecture")):
        ran = [r for r in records if references in r["backdoored"]]
        if ran:
            lines.append(f"{words}: found {sum(found(r, references) for r in ran)}/{len(ran)}, clean flagged "
                         f"{sum(r['clean'][references]['flagged'] for r in ran)}/{len(ran)}")
    scans = [r[k][references] for r in records for k in ("backdoored", "clean") for references in REFERENCES
             if references in r[k] and r[k][references]["calibration_cached"]]
    if scans:
        lines.append(f"scan seconds with a cached calibration: {min(s['seconds'] for s in scans)}-"
                     f"{max(s['seconds'] for s in scans)}")
    computed = {(r["arch"], references): r[k][references]["calibration_seconds"] for r in records
                for k in ("backdoored", "clean") for references in REFERENCES
                if references in r[k] and r[k][references]["calibration_cached"] is False}
    lines += [f"calibration computed for {arch} ({references}): {s} s" for (arch, references), s in sorted(computed.items())]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="vggish,resgn")
    parser.add_argument("--seeds", default="4,5,6")
    parser.add_argument("--references", default=",".join(REFERENCES), help="which references to scan with: builtin, own")
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "image-architectures"))
    parser.add_argument("--results", default="benchmarks/results/issue-16-image-architectures.json")
    args = parser.parse_args()
    os.environ["POISONGUARD_CACHE"] = args.cache  # calibrations of this run only, reused across its suspects
    torch.set_num_threads(2)
    path = Path(args.results)
    records = json.loads(path.read_text()) if path.is_file() else []
    done = {(r["arch"], r["seed"]) for r in records}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                if (arch, seed) in done:
                    continue
                records.append(run_case(arch, seed, Path(tmp) / f"{arch}-{seed}", tuple(args.references.split(","))))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(records, indent=1))
                print(f"{arch} seed {seed} done", flush=True)
    print("\n".join(summarise(records)))


if __name__ == "__main__":
    main()
