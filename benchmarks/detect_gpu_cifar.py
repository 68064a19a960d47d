"""Neural Cleanse at GPU scale: CIFAR-10 PreActResNet-18, 10 and 100 classes (issue 3).

Figures it prints, in one run:
  1. the backdoored model (BadNets 3x3 at 10%, target 0): clean accuracy and ASR;
  2. a full 10-class NC scan with the batched engine: seconds, flagged classes (goal <= 60 s);
  3. the same scan with the faithful one-class-at-a-time reference
     (benchmarks/detect_sequential_reference.py): seconds, speed-up, same verdict (goal >= 5x);
  4. a 100-class scan (goal <= 5 min). No 100-class data set is available offline, so this is
     a *timing* figure: the trained backbone with a fresh 100-way head fitted for one epoch on
     CIFAR-10 images labelled (class x 10 + a fixed per-image draw); the inversion does the same
     work per class whatever the labels mean, but its verdict means nothing and is not reported.

    PYTHONPATH=src python benchmarks/detect_gpu_cifar.py [--epochs 30] [--cache DIR]
    PYTHONPATH=src python benchmarks/detect_gpu_cifar.py --device cpu --smoke   # pipeline check only

Not measured yet: no GPU was lent to the session that wrote it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detect_sequential_reference import sequential_neural_cleanse  # noqa: E402

from poisonguard.attacks import badnets_trigger, poison_dataset  # noqa: E402
from poisonguard.data import ImageData, load_data, per_class_subset  # noqa: E402
from poisonguard.detect.anomaly import flag_small, mad_anomaly_index  # noqa: E402
from poisonguard.detect.engine import InversionConfig, frozen_copy, invert_triggers  # noqa: E402
from poisonguard.models import build_model, load_model, save_model  # noqa: E402
from poisonguard.train import evaluate, fit  # noqa: E402


def backdoored_model(splits, trigger, args, device: str):
    path = args.cache / "cifar_badnets" / "model.pt" if args.cache else None
    if path is not None and path.is_file():
        return load_model(path).model.to(device)
    train = splits.train if not args.smoke else per_class_subset(splits.train, fraction=0.02, seed=0)
    data = poison_dataset(train, trigger, rate=0.1, seed=0).data
    start = time.perf_counter()
    model = fit(build_model("preact_resnet18", num_classes=10, input_shape=splits.input_shape, seed=0), data,
                epochs=args.epochs, batch_size=128, optimizer="sgd", seed=0, device=device)
    print(f"trained the backdoored model in {time.perf_counter() - start:.0f} s", flush=True)
    if path is not None:
        save_model(model, path, arch="preact_resnet18", classes=splits.classes, input_shape=splits.input_shape)
    return model


def hundred_class_model(model, splits, device: str, smoke: bool):
    """The trained backbone with a new 100-way head (one epoch on relabelled images): timing only."""
    wide = build_model("preact_resnet18", num_classes=100, input_shape=splits.input_shape, seed=1)
    own = wide.state_dict()
    own.update({k: v for k, v in model.state_dict().items() if own[k].shape == v.shape})
    wide.load_state_dict(own)
    train = per_class_subset(splits.train, fraction=0.02 if smoke else 0.2, seed=1)
    draw = torch.Generator().manual_seed(0)
    labels = train.y * 10 + torch.randint(0, 10, (len(train.y),), generator=draw)
    relabelled = ImageData(train.x, labels, classes=tuple(str(i) for i in range(100)))
    return fit(wide, relabelled, epochs=1, batch_size=128, optimizer="sgd", seed=1, device=device)


def scan(model, clean, k: int, config: InversionConfig, device: str):
    start = time.perf_counter()
    inv = invert_triggers(model, clean.x, clean.y, num_classes=k, config=config, seed=0, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    index = mad_anomaly_index(inv.mask_l1)
    return seconds, flag_small(inv.mask_l1, index), index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the backdoored model")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="1 training epoch on 2%% of the data, 2 inversion epochs: checks the pipeline only")
    parser.add_argument("--skip-sequential", action="store_true")
    parser.add_argument("--skip-100", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --device cpu --smoke)")
    if args.smoke:
        args.epochs = 1
    splits = load_data("cifar10")
    trigger = badnets_trigger(splits.input_shape, target=0, size=3)
    model = backdoored_model(splits, trigger, args, args.device)
    ev = evaluate(model, splits.test, trigger)
    print(f"backdoored PreActResNet-18: clean {ev.clean_accuracy:.4f} ASR {ev.attack_success_rate:.4f}", flush=True)
    clean = per_class_subset(splits.train, fraction=0.002 if args.smoke else 0.01, seed=0)
    config = InversionConfig(epochs=2 if args.smoke else 40)
    frozen = frozen_copy(model, torch.device(args.device))

    t_batched, flagged, index = scan(frozen, clean, 10, config, args.device)
    print(f"10 classes, batched engine: {t_batched:7.1f} s flagged {flagged} (true target 0) "
          f"index {[round(float(v), 2) for v in index]}  goal <= 60 s", flush=True)
    if not args.skip_sequential:
        start = time.perf_counter()
        _, _, l1_seq, _ = sequential_neural_cleanse(frozen, clean.x.to(args.device), 10, config, seed=0)
        t_seq = time.perf_counter() - start
        seq_flagged = flag_small(l1_seq, mad_anomaly_index(l1_seq))
        print(f"10 classes, sequential ref: {t_seq:7.1f} s flagged {seq_flagged}; speed-up {t_seq / t_batched:.2f}x "
              f"(goal >= 5x); same verdict {seq_flagged == flagged}", flush=True)
    if not args.skip_100:
        wide = frozen_copy(hundred_class_model(model, splits, args.device, args.smoke), torch.device(args.device))
        t_100, _, _ = scan(wide, clean, 100, config, args.device)
        print(f"100 classes, batched engine: {t_100:7.1f} s (goal <= 300 s; timing only)", flush=True)


if __name__ == "__main__":
    main()
