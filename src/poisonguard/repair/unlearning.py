"""Neural Cleanse mitigation (Wang, Yao, Shan, Li, Viswanath, Zheng & Zhao, 2019,
"Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks", sec. 6).

Given a reconstructed trigger (from `scan`, a trigger file, or, when none is given, the
detect family's Neural Cleanse run on the clean data), three mitigations:
- "unlearn": fine-tune on clean images of which a share is stamped with the reconstructed
  trigger but keeps its true label, so the trigger stops meaning "target class";
- "prune": zero the penultimate-layer neurons whose activation the trigger raises most,
  until the reconstructed trigger no longer works (or clean accuracy would fall too far);
- "filter": keep the model, and build an input filter on the same neurons that flags
  inputs whose activation on them is unusually high (reported, with its rates, in `extra`).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.attacks.triggers import PatchTrigger, attack_eligible
from poisonguard.errors import UserError
from poisonguard.metrics import accuracy, worst_attack_success
from poisonguard.repair.base import (
    Context, Repairer, check_choice, check_fraction, check_positive, cosine, finetune, last_linear,
    register_repairer, set_optimiser,
)
from poisonguard.report.evaluation import trigger_word
from poisonguard.results import Detection
from poisonguard.utils import batches

log = logging.getLogger(__name__)

MODES = ("unlearn", "prune", "filter")


def stamp_some(x: torch.Tensor, triggers: Sequence[PatchTrigger], share: float, generator: torch.Generator) -> torch.Tensor:
    """Stamp a random `share` of the images x (N, C, H, W), each with a random one of `triggers`."""
    chosen = torch.rand(len(x), generator=generator) < share
    which = torch.randint(0, len(triggers), (len(x),), generator=generator)
    out = x.clone()
    for k, trig in enumerate(triggers):
        sel = (chosen & (which == k)).to(x.device)
        if sel.any():
            out[sel] = trig.apply(x[sel])
    return out


@torch.no_grad()
def penultimate(model: nn.Module, head: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The classifier's input features (N, D) for images x."""
    store: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inp, _o: store.append(inp[0].flatten(1).cpu()))
    try:
        model.eval()
        for sl in batches(len(x), 512):
            model(x[sl].to(device))
    finally:
        handle.remove()
    return torch.cat(store)


def neuron_ranking(clean_feats: torch.Tensor, stamped_feats: torch.Tensor) -> torch.Tensor:
    """Neurons (D,) ordered by how much the trigger raises their mean activation, largest first."""
    return torch.argsort(stamped_feats.mean(0) - clean_feats.mean(0), descending=True)


def detection_triggers(detection: Detection | None, classes: Sequence[int] | None = None) -> list[PatchTrigger]:
    """PatchTriggers of a detector's reconstruction (masks (K, H, W), patterns (K, C, H, W)).

    `classes` default to the ones the detection flagged; a detection without masks gives none.
    """
    if detection is None or detection.masks is None or detection.patterns is None:
        return []
    targets = list(detection.extra.get("targets", range(len(detection.masks))))
    out = []
    for k in (detection.flagged_classes if classes is None else classes):
        row = targets.index(k)  # a scan over some classes keeps one row per scanned class
        mask = detection.masks[row].detach().float().cpu().clamp(0, 1)
        pattern = detection.patterns[row].detach().float().cpu().clamp(0, 1)
        out.append(PatchTrigger(mask, pattern, int(k), origin="reconstructed"))
    return out


@register_repairer("unlearn")
class Unlearning(Repairer):
    """Neural Cleanse's mitigations with reconstructed triggers (Wang et al., 2019).

    Args:
        mode: "unlearn" (default), "prune" or "filter" (see the module docstring).
        triggers: reconstructed PatchTriggers to unlearn (e.g. from `scan`); None runs the detect
            family's `NeuralCleanse` on the clean data and uses its flagged classes (or, when none
            is flagged, the class with the smallest mask).
        triggers_source: where the given `triggers` come from, recorded in the result's
            `trigger_source` ("given"; "scan" when they are a scan's reconstructions).
        stamp_share: share of fine-tuning images stamped with a trigger (paper: 20%).
        epochs, lr, batch_size, optimizer, weight_decay: the unlearning fine-tune (cosine decay).
        max_accuracy_drop, stop_rate, prune_step: pruning stops once the reconstructed
            trigger's success rate is <= stop_rate, or before clean accuracy would drop by
            more than max_accuracy_drop; prune_step neurons at a time (0: about 1/64).
        filter_fraction, filter_fpr: the filter watches the top filter_fraction of neurons
            and sets its threshold for this false-positive rate on clean data.
        reverse_epochs: Neural Cleanse's epoch limit (passes over the clean data) when it reconstructs.
        seed, device: as everywhere.
    """

    def __init__(self, *, mode: str = "unlearn", triggers: Sequence[PatchTrigger] | None = None,
                 triggers_source: str = "given", stamp_share: float = 0.2,
                 epochs: int = 20, lr: float = 0.01, batch_size: int = 32, optimizer: str = "sgd",
                 weight_decay: float = 5e-4, max_accuracy_drop: float = 0.05, stop_rate: float = 0.05,
                 prune_step: int = 0, filter_fraction: float = 0.01, filter_fpr: float = 0.05, reverse_epochs: int = 40,
                 seed: int = 0, device: str = "auto") -> None:
        check_choice("mode", mode, MODES)
        if triggers is not None:
            triggers = tuple(triggers)
            if not triggers or not all(isinstance(t, PatchTrigger) for t in triggers):
                raise ValueError("unlearning needs mask-and-pattern triggers (PatchTrigger / trigger .npz with mask and pattern)")
            if any(t.target < 0 for t in triggers):
                raise ValueError("unlearning needs single-target triggers, not all-to-all")
        check_choice("triggers_source", triggers_source, ("given", "scan"))
        check_fraction("stamp_share", stamp_share, allow_zero=False)
        set_optimiser(self, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay)
        check_fraction("max_accuracy_drop", max_accuracy_drop)
        check_fraction("stop_rate", stop_rate)
        check_positive("prune_step", prune_step, integer=True, allow_zero=True)
        check_fraction("filter_fraction", filter_fraction, allow_zero=False)
        check_fraction("filter_fpr", filter_fpr, allow_zero=False)
        check_positive("reverse_epochs", reverse_epochs, integer=True)
        self.mode, self.triggers, self.triggers_source, self.stamp_share = mode, triggers, triggers_source, stamp_share
        self.max_accuracy_drop, self.stop_rate, self.prune_step = max_accuracy_drop, stop_rate, prune_step
        self.filter_fraction, self.filter_fpr, self.reverse_epochs = filter_fraction, filter_fpr, reverse_epochs
        self.seed, self.device = seed, device

    def hyperparameters(self) -> dict[str, Any]:
        params = super().hyperparameters()
        params["triggers"] = None if self.triggers is None else [f"target {t.target}" for t in self.triggers]
        return params

    def _triggers(self, ctx: Context) -> tuple[tuple[PatchTrigger, ...], dict[str, Any]]:
        if self.triggers is not None:
            for t in self.triggers:
                if t.input_shape != ctx.clean.input_shape or t.target >= ctx.clean.num_classes:
                    raise UserError(f"trigger for class {t.target} with inputs {t.input_shape} does not fit the data "
                                    f"({ctx.clean.input_shape}, {ctx.clean.num_classes} classes)")
            return self.triggers, {"trigger_source": self.triggers_source}
        from poisonguard.detect import DETECTORS

        if ctx.clean.num_classes < 3:  # its own Neural Cleanse run needs an outlier among 3+ classes
            raise UserError("unlearn reconstructs its trigger with Neural Cleanse, whose outlier test needs at least "
                            "3 classes; on a two-class model give it a scan's triggers (--from-scan SCAN_FOLDER, "
                            "which the two-class scan's reference_contrast writes)")
        scan = DETECTORS.get("neural_cleanse")(epochs=self.reverse_epochs, seed=self.seed, device=str(ctx.device))
        rec = scan.detect(ctx.model, ctx.clean)
        classes = list(rec.flagged_classes) or [int(torch.tensor(rec.mask_l1).argmin())]
        info = {"trigger_source": "reconstructed", "reconstruction": {
            "method": rec.method, "flagged_classes": list(rec.flagged_classes), "used_classes": classes,
            "anomaly_index": [round(a, 3) for a in rec.anomaly_index], "mask_l1": [round(v, 2) for v in rec.mask_l1],
            "seconds": rec.seconds}}
        return tuple(detection_triggers(rec, classes)), info

    def _run(self, ctx: Context) -> dict[str, Any]:
        triggers, extra = self._triggers(ctx)
        extra["mode"] = self.mode
        extra["unlearned_classes"] = [t.target for t in triggers]
        if ctx.trigger is None:
            extra["trigger"] = triggers[0]  # measure the attack success rate with the reconstruction
        if self.mode == "unlearn":
            extra.update(self._unlearn(ctx, triggers))
        else:
            extra.update(self._prune_or_filter(ctx, triggers))
        return extra

    def _unlearn(self, ctx: Context, triggers: Sequence[PatchTrigger]) -> dict[str, Any]:
        gen = ctx.generator

        def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(m(stamp_some(x, triggers, self.stamp_share, gen)), y)

        before = worst_attack_success(ctx.model, ctx.clean, triggers)
        tuned: dict[str, Any] = {}
        losses = finetune(ctx.model, ctx.clean, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, generator=gen,
                          device=ctx.device, optimizer=self.optimizer, weight_decay=self.weight_decay,
                          schedule=cosine(self.epochs), loss_fn=loss_fn, desc="unlearn", info=tuned)
        return {"final_loss": losses[-1], **tuned, "reconstructed_trigger_rate_before": before,
                "reconstructed_trigger_rate_after": worst_attack_success(ctx.model, ctx.clean, triggers)}

    def _prune_or_filter(self, ctx: Context, triggers: Sequence[PatchTrigger]) -> dict[str, Any]:
        model, clean = ctx.model, ctx.clean
        name, head = last_linear(model, clean.x[:2].to(ctx.device))
        clean_f = penultimate(model, head, clean.x, ctx.device)
        stamped = torch.cat([t.apply(clean.x) for t in triggers])
        stamped_f = penultimate(model, head, stamped, ctx.device)
        order = neuron_ranking(clean_f, stamped_f)
        info: dict[str, Any] = {"layer": name, "neurons": int(clean_f.shape[1])}
        if self.mode == "filter":
            return {**info, **self._filter(model, head, clean_f, stamped_f, order, ctx, triggers)}
        base = accuracy(model, clean)
        step = self.prune_step or max(1, -(-clean_f.shape[1] // 64))
        original = head.weight.detach().clone()
        curve = [{"pruned": 0, "clean_accuracy": base, "trigger_rate": worst_attack_success(model, clean, triggers)}]
        kept = 0
        for k in range(step, clean_f.shape[1], step):
            with torch.no_grad():
                head.weight.copy_(original)
                head.weight[:, order[:k].to(ctx.device)] = 0
            acc, rate = accuracy(model, clean), worst_attack_success(model, clean, triggers)
            curve.append({"pruned": k, "clean_accuracy": acc, "trigger_rate": rate})
            if base - acc > self.max_accuracy_drop:
                break
            kept = k
            if rate <= self.stop_rate:
                break
        with torch.no_grad():
            head.weight.copy_(original)
            head.weight[:, order[:kept].to(ctx.device)] = 0
        return {**info, "pruned_neurons": kept, "pruned_indices": order[:kept].tolist(), "curve": curve}

    def _filter(self, model, head, clean_f, stamped_f, order, ctx, triggers) -> dict[str, Any]:
        top = order[: max(1, int(round(self.filter_fraction * clean_f.shape[1])))]
        clean_score = clean_f[:, top].mean(1)
        threshold = float(torch.quantile(clean_score, 1 - self.filter_fpr))
        stamped_score = stamped_f[:, top].mean(1)
        result = {"filter_neurons": top.tolist(), "filter_threshold": threshold,
                  "filter_false_positive_rate_clean": float((clean_score > threshold).float().mean()),
                  "filter_detection_rate_reconstructed": float((stamped_score > threshold).float().mean())}
        if trigger_word(ctx.trigger) in ("real", "given"):  # a trigger, and not a scan's own
            keep = attack_eligible(ctx.trigger, ctx.clean.y)
            real = penultimate(model, head, ctx.trigger.apply(ctx.clean.x[keep]), ctx.device)[:, top].mean(1)
            result["filter_detection_rate_real_trigger"] = float((real > threshold).float().mean())
        return result
