"""Argument types and option groups every command shares (the parser side of the CLI)."""

from __future__ import annotations

import argparse


MAX_SEED = 2**32 - 1  # NumPy's legacy seeding and many libraries take 32 bits; torch takes 64


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr (no usage block) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"poisonguard: error: {self.prog}: {message.splitlines()[0] if message else ''} "
                     f"(see {self.prog} --help)\n")


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a whole number in [0, {MAX_SEED}], got {text!r}") from exc
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must lie in [0, {MAX_SEED}], got {text}")
    return value


DEVICE_TYPES = ("cpu", "cuda", "mps")


def device(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps; `meta` and other torch device types cannot run a model."""
    import re

    low = text.strip().lower()
    if low == "auto" or re.fullmatch(r"(cpu|mps|cuda)(:\d{1,3})?", low):
        return low
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps, got {text!r}")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=seed, default=0, help="seed for every random choice (default 0)")
    parser.add_argument("--device", type=device, default="auto", help="auto (CUDA when present), cpu, cuda[:N] or mps")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress lines (poisonguard's own "
                                                          "warnings still print)")
    parser.add_argument("--force", action="store_true",
                        help="write into an --out that holds another command's or other inputs' outputs "
                             "(its old outputs are removed first)")
    parser.add_argument("--limit", action="append", metavar="NAME=N", default=None,
                        help="raise a resource limit for this run, e.g. max_pixels=100000000 (see README, Security); "
                             "also POISONGUARD_MAX_<NAME>")
    parser.add_argument("--label-column", default=None, metavar="NAME",
                        help="for --data TABLE.csv|.parquet or a text CSV: the column that holds the labels")
    parser.add_argument("--text-column", default=None, metavar="NAME",
                        help="for --data CORPUS.csv: the column that holds the texts (makes the data text)")
    parser.add_argument("--tokenizer", default=None, metavar="FILE",
                        help="text: a tokenizer JSON (default: built from the training texts, or the model's own)")
    parser.add_argument("--embedding-layer", default=None, metavar="NAME",
                        help="text: the name of the model's nn.Embedding (default: 'embedding' or its only one)")


def add_data(parser: argparse.ArgumentParser, *, required: bool = True, allow_none: bool = False) -> None:
    extra = " or 'none' (data-free methods)" if allow_none else ""
    parser.add_argument("--data", required=required, default=None if required else "mnist5k",
                        help=f"mnist5k, cifar10, a CIFAR archive or batches folder, an image folder, .zip or .npz{extra}")


def add_model(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    parser.add_argument("model", help="model file, recognised by its bytes: TorchScript, torch.export (.pt2), ONNX, "
                                      "or weights (state dict, pytorch_model.bin, Lightning .ckpt, safetensors, "
                                      "a sharded *.index.json) with metadata.json or --arch")
    g.add_argument("--arch", default=None,
                   help="architecture of a weights-only file: a built-in name, torchvision:NAME, timm:NAME, or YOUR OWN "
                        "CODE as path/to/file.py:callable or package.module:callable (this runs that code; "
                        "poisonguard never runs code named by a metadata.json)")
    add_model_input_options(g)


def add_model_input_options(g) -> None:
    """--arch-kwargs, --normalize, --input-size: how a model from elsewhere is built and fed
    (every command that takes a model file, `model_options` reads them)."""
    g.add_argument("--arch-kwargs", default=None, metavar="K=V,...",
                   help="keyword arguments for the --arch callable, e.g. num_classes=10,width=2 (it gets exactly these)")
    g.add_argument("--normalize", default=None, metavar="MEAN,STD",
                   help="normalise inputs inside the model: MEAN,STD for all channels, M1,M2,M3/S1,S2,S3, or imagenet")
    g.add_argument("--input-size", default=None, metavar="H,W",
                   help="resize inputs inside the model to the size it expects (e.g. 224,224)")
    g.add_argument("--binary-output", default=None, choices=("logit", "probability"),
                   help="a two-class model that answers one number per input: read it as the logit or the "
                        "probability of class 1 (default: guessed from a probe, said in a warning)")


def model_options(args) -> dict:
    """load_model keyword arguments from the --arch-kwargs / --normalize / --input-size / --binary-output options."""
    from poisonguard.models.arch import parse_kwargs
    from poisonguard.models.wrappers import parse_normalize, parse_size

    return {"arch_kwargs": parse_kwargs(getattr(args, "arch_kwargs", None)),
            "normalize": parse_normalize(getattr(args, "normalize", None)),
            "input_size": parse_size(getattr(args, "input_size", None)),
            "binary_output": getattr(args, "binary_output", None)}


def _number(text: str, cast=float):
    try:
        return cast(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from exc


def probability(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def finite_float(text: str) -> float:
    value = _number(text)
    if not abs(value) < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def position(text: str) -> str | tuple[int, int]:
    """A named patch position (bottom-right, top-left, center, ...) or ROW,COL."""
    if "," not in text:
        return text.strip().lower()
    parts = text.split(",")
    try:
        values = tuple(int(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"must be a name or ROW,COL (two non-negative integers), got {text!r}")
    return values  # type: ignore[return-value]


def color(text: str) -> tuple[float, ...]:
    """One value or one per channel, comma-separated, each in [0, 1]."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be one value or one per channel in [0, 1], comma-separated, got {text!r}")
    return values


def parse_target(text: str) -> int:
    from poisonguard.attacks import ALL_TO_ALL

    if text.lower() in ("all", "all-to-all", "all_to_all"):
        return ALL_TO_ALL
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"target must be a class index or 'all', got {text!r}") from exc
    if value < 0:  # -1 is ALL_TO_ALL inside: a user who meant "the last class" got an all-to-all attack
        raise argparse.ArgumentTypeError(f"target must be a class index (0 or more) or 'all', got {text!r}")
    return value


# ---------------------------------------------------------------- attack / train

def add_attack_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("attack")
    g.add_argument("--target", type=parse_target, default=0,
                   help="target class index (classes in sorted order: labels 3, 7, 9 are 0, 1, 2), or 'all' for "
                        "all-to-all (y -> y+1)")
    g.add_argument("--rate", type=probability, default=0.1, help="share of training images poisoned (default 0.1)")
    g.add_argument("--patch-size", type=positive_int, default=3, help="BadNets patch side in pixels")
    g.add_argument("--position", type=position, default="bottom-right", help="BadNets patch position: bottom-right, top-left, center, ... or ROW,COL")
    g.add_argument("--color", type=color, default=(1.0,), help="BadNets patch colour: one value or one per channel, comma-separated, in [0, 1]")
    g.add_argument("--blend-ratio", type=probability, default=0.15, help="Blended: weight of the key image")
    g.add_argument("--blend-image", default=None, help="Blended: key image file (default: seeded uniform noise)")
    g.add_argument("--wanet-k", type=positive_int, default=4, help="WaNet control grid size")
    g.add_argument("--wanet-strength", type=finite_float, default=0.5, help="WaNet warping strength s")
    g.add_argument("--source", type=int, default=None, help="label-flip: flip only this class")
    g.add_argument("--features", default=None, metavar="F1,F2,...",
                   help="tabular-trigger: the features to set (names or indices; default --trigger-size seeded numeric ones)")
    g.add_argument("--trigger-words", default=None, metavar="W1,W2",
                   help="rare-word: the inserted words (default cf, BadNL's rare word)")
    g.add_argument("--trigger-sentence", default=None, help="insert-sentence: the inserted sentence")
    g.add_argument("--insert-position", default="random", help="rare-word / insert-sentence: random, start, end or a word index")
    g.add_argument("--trigger-size", type=positive_int, default=None,
                   help="tabular-trigger: how many features (default 3, or every numeric one where the table has fewer)")
    g.add_argument("--trigger-value", default="max", metavar="RULE|V1,V2,...",
                   help="tabular-trigger: max (default: each feature's observed maximum), min, mode (Tabdoor's), "
                        "or one in-range value per feature")


def add_fit_options(parser: argparse.ArgumentParser, *, epochs: int = 10) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--arch", default=None, help="architecture (default: mnist_cnn for 1 channel, preact_resnet18 for 3, "
                                                "mlp for a table)")
    g.add_argument("--epochs", type=positive_int, default=epochs, help=f"passes over the training data (default {epochs})")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="default 64 (1 channel) or 128; with DP-SGD (--dp-epsilon) min(256, N)")
    g.add_argument("--lr", type=positive_float, default=None, help="default 1e-3 for adam, 0.1 for sgd")
    g.add_argument("--optimizer", choices=["adam", "sgd"], default=None, help="default adam (1 channel) or sgd")
    g.add_argument("--augment", choices=["auto", "none", "crop", "crop_flip"], default="auto")


def fit_config(args, splits):
    from poisonguard.train import FitConfig

    small = splits.kind != "image" or splits.input_shape[0] == 1
    return FitConfig(epochs=args.epochs, batch_size=args.batch_size or (64 if small else 128), lr=args.lr,
                     optimizer=args.optimizer or ("adam" if small else "sgd"), augment=args.augment,
                     seed=args.seed, device=args.device)


def default_arch(args, splits) -> str:
    if args.arch:
        return args.arch
    if splits.kind != "image":
        from poisonguard.models.registry import default_architecture

        return default_architecture(splits.kind, splits.input_shape)
    return "mnist_cnn" if splits.input_shape[0] == 1 else "preact_resnet18"




def method_list(text: str, registry) -> list[str]:
    """`--method a,b`: registered names, normalised, duplicates dropped, in the order given.

    An empty list or an unknown name is the user's mistake (one line naming the known ones).
    """
    from poisonguard.errors import UserError

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UserError("--method is empty")
    for name in names:
        registry.get(name)  # unknown name -> UserError listing the known ones
    return [registry.normalise(n) for n in dict.fromkeys(names)]


def add_verdict_options(parser: argparse.ArgumentParser, *, method_default: str | None, method_help: str,
                        fpr_type, fpr_default, fpr_help: str, finding: str | None = None) -> None:
    """The options of a command that ends in a calibrated verdict: --method, --fpr and, given
    `finding` (what exit code 1 means), --exit-zero."""
    parser.add_argument("--method", default=method_default, help=method_help)
    parser.add_argument("--fpr", type=fpr_type, default=fpr_default, help=fpr_help)
    if finding is not None:
        parser.add_argument("--exit-zero", action="store_true", help=f"exit 0 even when {finding}")
