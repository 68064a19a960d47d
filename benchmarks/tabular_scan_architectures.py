"""Issue 19, tables: the tabular scan's default on more seeds and on architectures we did not write.

`tabular_checklist.py` measures the scan on our own `mlp` and report seeds 1-3. A user's table
model is rarely ours, so this script scans, per table and seed, three kinds of suspect, each
trained by its own recipe outside poisonguard, as a user would:

- `mlp`: the built-in (10 epochs of Adam, as the checklist trains it);
- `residual`: a user's model with its own scaling buffers, a LayerNorm/GELU residual block,
  trained 15 epochs with Adam 3e-3;
- `batchnorm`: a user's model with BatchNorm, LeakyReLU and dropout, trained 20 epochs with SGD
  and momentum (fixed before any result with it was seen).

Each gets a backdoored copy (Tabdoor, 3 features at their maximum, 5% of rows, dirty label,
target the minority class: the checklist's attack) and a clean copy (another seed). Both are
judged by the tabular default verdict (`reference_contrast`, 8 built-in `mlp` references on
25% of the training part, calibrated, FPR 0.05), the references being what `scan` trains for a
model whose architecture it cannot rebuild. Also printed: a clean `mlp` trained on another
random quarter of the training part (as many rows as a reference; about a quarter of them are
the references' too), which separates "the suspect saw other data" from "it saw more data".

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/tabular_scan_architectures.py --tables fair,randhie --seeds 4,5,6
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tabular_checklist import TARGET, run_resumable  # noqa: E402


class Residual(nn.Module):
    """A user's model: fixed scaling buffers, a LayerNorm/GELU residual block."""

    def __init__(self, width: int, classes: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.inp = nn.Linear(width, 48)
        self.block = nn.Sequential(nn.LayerNorm(48), nn.GELU(), nn.Linear(48, 48))
        self.head = nn.Sequential(nn.GELU(), nn.Linear(48, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp((x - self.mean) / self.std)
        return self.head(h + self.block(h))


class BatchNormNet(nn.Module):
    """A user's model: BatchNorm, LeakyReLU, dropout, its own scaling buffers."""

    def __init__(self, width: int, classes: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mu", mean)
        self.register_buffer("sd", std)
        self.net = nn.Sequential(nn.Linear(width, 100), nn.BatchNorm1d(100), nn.LeakyReLU(0.1), nn.Dropout(0.1),
                                 nn.Linear(100, 50), nn.LeakyReLU(0.1), nn.Linear(50, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mu) / self.sd)


def _user_fit(model: nn.Module, data, *, epochs: int, optimiser, batch: int, seed: int) -> nn.Module:
    """A plain PyTorch loop, as a user writes it (not poisonguard's `fit`)."""
    g = torch.Generator().manual_seed(seed)
    x, y = data.x.float(), data.y
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            if len(idx) < 2:  # batch norm needs two rows
                continue
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimiser.step()
    return model.eval()


def train_suspect(kind: str, data, seed: int) -> nn.Module:
    from poisonguard.models import build_model
    from poisonguard.train import fit

    if kind == "mlp":
        model = build_model("mlp", num_classes=data.num_classes, input_shape=data.input_shape, seed=seed)
        return fit(model, data, epochs=10, batch_size=64, seed=seed, device="cpu")
    torch.manual_seed(seed)
    x = data.x.float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-3)
    if kind == "residual":
        model = Residual(x.shape[1], data.num_classes, mean, std)
        return _user_fit(model, data, epochs=15, optimiser=torch.optim.Adam(model.parameters(), 3e-3), batch=64, seed=seed)
    model = BatchNormNet(x.shape[1], data.num_classes, mean, std)
    return _user_fit(model, data, epochs=20, optimiser=torch.optim.SGD(model.parameters(), 0.05, momentum=0.9),
                     batch=128, seed=seed)


def run_case(table: str, seed: int, kinds: list[str], folder: Path) -> list[dict]:
    from poisonguard.attacks import poison_dataset
    from poisonguard.attacks.tabular import tabular_trigger
    from poisonguard.data import load_data, per_class_subset
    from poisonguard.data.example_tables import export_table
    from poisonguard.detect.calibration import calibrate, train_references
    from poisonguard.detect.verdict import TABULAR_METHODS, scan_verdict
    from poisonguard.train import evaluate

    path, label = export_table(table, folder)
    splits = load_data(str(path), label_column=label, seed=seed)
    trigger = tabular_trigger(splits.train, target=TARGET[table], seed=seed)
    poisoned = poison_dataset(splits.train, trigger, rate=0.05, seed=seed).data
    clean = per_class_subset(splits.train, fraction=0.25, seed=seed)
    t = time.perf_counter()
    refs = train_references(clean, architecture="mlp", n_models=8, seed=seed, device="cpu")
    cal = calibrate(clean, architecture="mlp", source="benchmark", methods=list(TABULAR_METHODS), n_models=8,
                    seed=seed, device="cpu", models=refs, use_cache=False)
    calibration_s = time.perf_counter() - t

    def judge(model) -> dict:
        v = scan_verdict(model, clean, methods=list(TABULAR_METHODS), calibration=cal, references=refs, seed=seed,
                         device="cpu")
        index = {e["class"]: e["statistic"] for e in v.evidence}
        return {"flagged": v.backdoored, "targets": list(v.targets), "index": max(index.values()),
                "target_index": index[TARGET[table]], "threshold": v.evidence[0]["threshold"],
                "sizes": [round(float(s), 3) for s in v.detections[0].mask_l1]}

    rows = []
    for kind in kinds:
        backdoored, clean_model = train_suspect(kind, poisoned, seed), train_suspect(kind, splits.train, 100 + seed)
        ev_bd, ev_clean = evaluate(backdoored, splits.test, trigger), evaluate(clean_model, splits.test, trigger)
        rows.append({"table": table, "seed": seed, "suspect": kind,
                     "backdoored": {"accuracy": ev_bd.clean_accuracy, "asr": ev_bd.attack_success_rate, **judge(backdoored)},
                     "clean": {"accuracy": ev_clean.clean_accuracy, "asr": ev_clean.attack_success_rate, **judge(clean_model)},
                     "calibration_s": round(calibration_s, 1)})
    other = per_class_subset(splits.train, fraction=0.25, seed=seed + 777)  # another quarter of the rows
    rows.append({"table": table, "seed": seed, "suspect": "mlp, another quarter of the rows",
                 "clean": judge(train_suspect("mlp", other, 100 + seed))})
    return rows


def summarise(rows: list[dict]) -> list[str]:
    lines = ["| table | seed | suspect | backdoored: ASR / found (target index; threshold) | clean: flagged (largest index) |",
             "|---|---|---|---|---|"]
    for r in rows:
        bd, cl = r.get("backdoored"), r["clean"]
        found = (f"{bd['asr']:.3f} / {'yes' if bd['flagged'] and bd['targets'] == [TARGET[r['table']]] else 'NO'} "
                 f"({bd['target_index']:.1f}; {bd['threshold']:.2f})") if bd else "-"
        lines.append(f"| {r['table']} | {r['seed']} | {r['suspect']} | {found} | "
                     f"{'FLAGGED' if cl['flagged'] else 'no'} ({cl['index']:.2f}) |")
    for kind in sorted({r["suspect"] for r in rows}):
        mine = [r for r in rows if r["suspect"] == kind]
        bd = [r["backdoored"] for r in mine if r.get("backdoored")]
        found = sum(b["flagged"] and b["targets"] == [TARGET[r["table"]]] for r, b in zip(mine, bd))
        lines.append(f"{kind}: found {found}/{len(bd)}; clean flagged {sum(r['clean']['flagged'] for r in mine)}/{len(mine)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="fair,randhie")
    parser.add_argument("--seeds", default="4,5,6")
    parser.add_argument("--suspects", default="mlp,residual,batchnorm")
    parser.add_argument("--results", default="benchmarks/results/issue-19-tabular-architectures.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    suspects = args.suspects.split(",")
    rows = run_resumable(args.results, args.tables, args.seeds,
                         lambda table, seed, folder: run_case(table, seed, suspects, folder))
    print("\n".join(summarise(sorted(rows, key=lambda r: (r["table"], r["seed"], r["suspect"])))))


if __name__ == "__main__":
    main()
