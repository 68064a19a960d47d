"""`Sanitizer`: train (or take) a model, score every training sample with each method, combine.

    from poisonguard.sanitize import Sanitizer
    result = Sanitizer(seed=0).run(train_data, reference=test_data)   # trains a small model itself
    result.verdict, result.flagged, result.targets

Positions in `flagged` index `train_data` as given. The model is trained with a small budget
(10 epochs of Adam on a built-in architecture, `training_architecture`), enough for the
representations to separate classes and to learn a trigger: that is what the methods read.
Nothing given is modified.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from torch import nn

from poisonguard.data import ImageData
from poisonguard.errors import UserError
from poisonguard.results import Sanitization
from poisonguard.sanitize.base import SANITIZERS, ScoringInputs, check_number
from poisonguard.sanitize.calibrate import CLASS_THRESHOLD, GATES, HELDOUT_ALPHA, calibrate, combine, heldout_excess
from poisonguard.sanitize.features import penultimate_features

log = logging.getLogger(__name__)

# SCAn alone: on the tuning seed it matched or beat scan+spectral on every row (class index
# 13.8 vs 9.0 on 1% blended MNIST; TPR 0.88 vs 0.81 on 5% BadNets CIFAR; FPR 0.1-0.3% vs
# 0.6-1.0%): spectral signatures never find poison alone and dilute the Stouffer sums.
DEFAULT_METHODS = ("scan",)
# Two-class tables: SCAn's class statistic alone stands 1.9x above the other class's on fair
# (index 0.66 < 1.0); spectral signatures see Tabdoor's rows (45 vs 6), as Tabdoor found, and the
# pair is what benchmarks/tabular_checklist.py measured (notes/issue-19.md).
TABULAR_METHODS = ("scan", "spectral")
# The sample cut's default per kind of data (benchmarks/results/issue-17.md, session 7).
# Images 5%: the calibrated z is conservative there (at 5%, 1.0% of class 0's clean CIFAR-10
# images passed the cut on the tuning seed), and the 1% cut left enough poison for an 11% ASR
# after retraining (3.6% at 5%). Tables stay at the first default, 1%: their combined z is not
# conservative (fair seed 2: 7% of the target class's clean rows above the 1% cut), and 5%
# raised FPR to 1.9-4.1% without finding more poison. Text: 1%, not measured at 5%.
DEFAULT_FPR = {"image": 0.05, "tabular": 0.01, "text": 0.01}
MIN_PER_CLASS = 10
MIN_CLASSES = 2  # two classes are compared with each other (calibrate.TWO_CLASS_THRESHOLD)


def check_data(data: ImageData) -> None:
    """UserError unless the data can be judged: finite inputs, >= 2 classes, enough per class."""
    if len(data) == 0:
        raise UserError("the data set is empty")
    if not torch.isfinite(data.x).all():
        raise UserError("the images contain NaN or Inf")
    counts = np.bincount(data.y.numpy(), minlength=data.num_classes)
    present = np.flatnonzero(counts)
    if len(present) < MIN_CLASSES:
        raise UserError(f"sanitize compares classes and needs samples of at least {MIN_CLASSES} classes; "
                        f"the data has {len(present)}")
    small = [int(c) for c in present if counts[c] < MIN_PER_CLASS]
    if small:
        raise UserError(f"class(es) {', '.join(map(str, small[:5]))} have fewer than {MIN_PER_CLASS} samples; "
                        "the methods need at least that many per class")


# Epochs of the model sanitize trains itself; the class threshold (CLASS_THRESHOLD) was set on
# models trained this long, and 2 epochs on mnist5k flagged clean data (a session-17 sweep).
DEFAULT_EPOCHS = 10


class Sanitizer:
    """Poisoned-sample detection with a calibrated, combined verdict.

    Args:
        methods: registered method names, Stouffer-combined (default: SCAn alone, DEFAULT_METHODS).
        fpr: share of a target class's clean samples allowed above the cut (None: DEFAULT_FPR
            by the data's kind: images 5%, tables and text 1%). Only target classes are cut, so
            clean data flags nothing.
        expected_rate: the poison share the user expects, if any: SPECTRE's epsilon and the
            size of the papers' fixed removal rules reported beside ours (never the cut).
        class_threshold: combined class anomaly index above which a class is a target.
        gate: how a class becomes a target: "either" (default: the index above, or the
            held-out test of `calibrate.py` where `reference` is given), "index", "heldout".
        heldout_alpha: family-wise level of the held-out test over the classes (default 0.01).
        epochs, arch, lr, batch_size: the small training budget when no model is given
            (arch None: `training_architecture` picks the built-in for the data).
        options: per-method keyword arguments, e.g. {"spectre": {"dims": 16}}.
        rule: "calibrated" (the default described above) or "paper": the union of each
            method's own fixed rule (spectral signatures and SPECTRE remove 1.5 x
            expected_rate per class, ABL the 1% lowest-loss, STRIP below its FRR threshold,
            SCAn the other subgroup of classes whose J index exceeds exp(2)); "poisoned"
            whenever that removes anything. Kept for comparison: on MNIST it flags clean data.
    """

    def __init__(self, *, methods=DEFAULT_METHODS, fpr: float | None = None, expected_rate: float | None = None,
                 class_threshold: float = CLASS_THRESHOLD, gate: str = "either", heldout_alpha: float = HELDOUT_ALPHA,
                 epochs: int = DEFAULT_EPOCHS, arch: str | None = None,
                 lr: float = 1e-3, batch_size: int = 64, options: dict | None = None, rule: str = "calibrated", seed: int = 0,
                 device: str = "auto") -> None:
        names = [SANITIZERS.normalise(m) for m in methods]
        if not names:
            raise ValueError("give at least one method")
        for name in names:
            SANITIZERS.get(name)
        if fpr is not None:
            check_number("fpr", fpr, low=0, high=0.5, open_low=True)
        if expected_rate is not None and not (isinstance(expected_rate, (int, float)) and 0 < expected_rate < 0.5):
            raise ValueError(f"expected_rate must lie in (0, 0.5), got {expected_rate!r}")
        check_number("class_threshold", class_threshold, low=0, open_low=True)
        if gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
        check_number("heldout_alpha", heldout_alpha, low=0, high=0.5, open_low=True)
        self.gate, self.heldout_alpha = gate, float(heldout_alpha)
        if rule not in ("calibrated", "paper"):
            raise ValueError(f"rule must be 'calibrated' or 'paper', got {rule!r}")
        if rule == "paper" and expected_rate is None and {"spectral", "spectre"} & {SANITIZERS.normalise(m) for m in methods}:
            raise UserError("the papers' rule for spectral signatures and SPECTRE removes 1.5 x the expected rate: "
                            "give --expected-rate")
        self.rule = rule
        check_number("epochs", epochs, low=1, integer=True)
        check_number("lr", lr, low=0, open_low=True)
        check_number("batch_size", batch_size, low=1, integer=True)
        self.methods = tuple(dict.fromkeys(names))
        self.fpr = None if fpr is None else float(fpr)
        self.expected_rate, self.class_threshold = expected_rate, float(class_threshold)
        self.epochs, self.arch, self.lr, self.batch_size = int(epochs), arch, float(lr), int(batch_size)
        self.options = {SANITIZERS.normalise(k): dict(v) for k, v in (options or {}).items()}
        self.seed, self.device = int(seed), device

    def _arch(self, data: ImageData) -> str:
        return self.arch or training_architecture(data)

    def _build(self, data: ImageData) -> nn.Module:
        from poisonguard.models import build_model

        return build_model(self._arch(data), num_classes=data.num_classes, input_shape=data.input_shape, seed=self.seed)

    def train_model(self, data: ImageData) -> nn.Module:
        from poisonguard.train import fit

        return fit(self._build(data), data, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                   optimizer="adam", augment="none", seed=self.seed, device=self.device)

    def _method(self, name: str):
        options = dict(self.options.get(name, {}))
        if name == "spectre" and self.expected_rate is not None:
            options.setdefault("epsilon", self.expected_rate)
        try:
            return SANITIZERS.get(name)(**options)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{name}: {exc}") from exc

    def run(self, data: ImageData, *, model: nn.Module | None = None, reference: ImageData | None = None) -> Sanitization:
        """Score every sample of `data`; `reference` is held-out data assumed clean (optional)."""
        start = time.perf_counter()
        check_data(data)
        if reference is not None and (len(reference) == 0 or reference.input_shape != data.input_shape):
            reference = None
        trained = model is None
        if trained:
            log.info("sanitize: training %s for %d epochs on the %d samples", self._arch(data), self.epochs, len(data))
            model = self.train_model(data)
        else:
            from poisonguard.models import check_classifier

            if data.kind != "text":  # token ids: the text family checks its models (models/text_files.py)
                check_classifier(model, data.input_shape, data.num_classes)
        train_seconds = time.perf_counter() - start
        feats = penultimate_features(model, data.x)
        ref_feats = penultimate_features(model, reference.x) if reference is not None else None
        inputs = ScoringInputs(data=data, features=feats, reference_features=ref_feats, model=model,
                               reference=reference, train_model=lambda: self._build(data).to(torch.device("cpu")),
                               seed=self.seed, device=self.device)
        labels = data.y.numpy()
        raw, zs, stats, summaries, paper, heldout = {}, {}, {}, {}, [], {}
        for name in self.methods:
            method = self._method(name)
            t0 = time.perf_counter()
            raw[name] = np.asarray(method.score(inputs), dtype=np.float64)
            if raw[name].shape != (len(data),) or not np.isfinite(raw[name]).all():
                raise UserError(f"{name}: produced scores of shape {raw[name].shape} or non-finite values")
            zs[name] = calibrate(raw[name], labels, per_class=method.per_class, calibrated=method.calibrated)
            if self.rule == "paper":
                paper.append(np.asarray(method.paper_flags(raw[name], labels, self.expected_rate), dtype=np.int64))
            stats[name] = method.class_stats(zs[name], labels)
            heldout[name] = {c: heldout_excess(zs[name][labels == c], ref) for c, ref in method.heldout_scores().items()}
            summaries[name] = {"paper": method.paper, "options": method.summary(),
                               "class_statistic": {str(c): round(float(v), 4) for c, v in stats[name].items()},
                               "seconds": round(time.perf_counter() - t0, 3)}
            if heldout[name]:
                summaries[name]["heldout_excess"] = {str(c): round(v, 3) for c, v in heldout[name].items()}
        gate = {"gate": self.gate, "heldout_alpha": self.heldout_alpha}
        fpr = self.fpr if self.fpr is not None else DEFAULT_FPR.get(data.kind, 0.01)
        decision = combine(zs, stats, labels, fpr=fpr, class_threshold=self.class_threshold, heldout=heldout, **gate)
        for name in self.methods:
            alone = combine({name: zs[name]}, {name: stats[name]}, labels, fpr=fpr,
                            class_threshold=self.class_threshold, heldout={name: heldout[name]}, **gate)
            summaries[name].update({"targets_alone": list(alone.targets), "flagged_alone": int(len(alone.flagged)),
                                    "class_index": {str(c): round(v, 3) for c, v in decision.per_method_index[name].items()}})
            if self.expected_rate is not None:
                summaries[name]["paper_rule_removes"] = _paper_rule_count(name, labels, self.expected_rate)
        flagged = tuple(int(i) for i in decision.flagged)
        poisoned, targets = decision.poisoned, decision.targets
        if self.rule == "paper":
            flagged = tuple(int(i) for i in np.unique(np.concatenate(paper)))
            targets = tuple(int(c) for c in np.unique(labels[list(flagged)])) if flagged else ()
            poisoned = bool(flagged)
        return Sanitization(
            verdict="poisoned" if poisoned else "clean", flagged=flagged, targets=targets,
            methods=self.methods, scores=summaries, n_samples=len(data), false_positive_rate=fpr,
            cut=decision.cut, class_index={str(c): round(v, 3) for c, v in decision.class_index.items()},
            class_threshold=decision.class_threshold, seconds=round(time.perf_counter() - start, 2),
            extra={"trained_model": trained, "arch": self._arch(data) if trained else None,
                   "epochs": self.epochs if trained else None, "train_seconds": round(train_seconds, 2),
                   "expected_rate": self.expected_rate, "feature_dim": int(feats.shape[1]),
                   "reference_samples": 0 if reference is None else len(reference), "rule": self.rule,
                   "gate": decision.gate, "gate_requested": self.gate,
                   "heldout_missing": _heldout_missing(self.gate, decision.gate, reference, labels),
                   "heldout_alpha": self.heldout_alpha, "heldout_cut": decision.heldout_cut,
                   "heldout_index": {str(c): round(v, 3) for c, v in decision.heldout_index.items()}},
            z=decision.z, method_scores=raw, method_z=zs, model=model)


def _heldout_missing(requested: str, used: str, reference: ImageData | None, labels: np.ndarray) -> str | None:
    """Why the held-out test asked for (gate "either" or "heldout") did not run, in words; None when it ran."""
    if requested == "index" or used != "index":
        return None
    from poisonguard.sanitize.scan import MIN_TEST

    if reference is None:
        return "the data has no test part of held-out samples"
    most = int(np.bincount(reference.y.numpy()).max()) if len(reference) else 0
    return (f"it needs at least {2 * MIN_TEST} held-out samples of a class, and the data's test part has at most "
            f"{most} (of {len(np.unique(labels))} classes)")


def training_architecture(data: ImageData) -> str:
    """The built-in model sanitize trains when given none.

    Colour images of at least 16 x 16 pixels: `cifar_cnn` (three conv blocks with batch norm).
    On CIFAR-10 the two-layer `mnist_cnn` learnt a 1% blend trigger only to ~49% attack success
    and its poison formed no cluster, so nothing could find it (benchmarks/results/issue-17.md).
    Grayscale or smaller images: `mnist_cnn` (5x cheaper; it learns MNIST triggers fully).
    Tables and text: their family's built-in.
    """
    if data.kind == "image":
        channels, height, width = data.input_shape
        return "cifar_cnn" if channels == 3 and min(height, width) >= 16 else "mnist_cnn"
    from poisonguard.models.registry import default_architecture

    return default_architecture(data.kind, data.input_shape)


def _paper_rule_count(name: str, labels: np.ndarray, rate: float) -> int:
    """How many samples the paper's own fixed rule would remove at this expected rate."""
    counts = np.bincount(labels)
    if name in ("spectral", "spectre"):
        return int(sum(math.floor(1.5 * rate * n) for n in counts if n))
    return int(math.ceil(rate * len(labels)))
