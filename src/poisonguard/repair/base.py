"""What every backdoor-removal method shares: the registry, input checks, before/after
evaluation, a small fine-tuning loop with hooks for extra losses, and layer lookup.

A repairer is a class with keyword-only hyperparameters checked in the constructor and a
`.repair(model, clean_data, *, trigger=None, test=None, aux_data=None)` call that copies the
model, repairs the copy, and returns a `results.Repair` with the repaired copy on `.model`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.attacks.triggers import Trigger, check_trigger_fits
from poisonguard.data import ImageData
from poisonguard.errors import UserError
from poisonguard.registry import Registry
from poisonguard.results import Evaluation, Repair
from poisonguard.train import evaluate
from poisonguard.utils import batches, progress, resolve_device, seeded

log = logging.getLogger(__name__)

REPAIRERS: Registry[type] = Registry("repair method")


def applies_to(name: str, kind: str) -> bool:
    """Whether the registered repairer `name` works on data of `kind` (its `kinds`; all kinds by default)."""
    return kind in getattr(REPAIRERS.get(name), "kinds", ("image", "tabular", "text"))


def register_repairer(name: str):
    """Class decorator: add a repairer to `REPAIRERS` and record its registry name on it."""

    def decorator(cls: type) -> type:
        cls.name = REPAIRERS.normalise(name)
        return REPAIRERS.register(name)(cls)

    return decorator


# ---------------------------------------------------------------- argument checks

def check_positive(name: str, value: float, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if integer:
        ok = ok and float(value).is_integer()
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_fraction(name: str, value: float, *, allow_zero: bool = True) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low_ok and value <= 1):
        raise ValueError(f"{name} must lie in {'[0' if allow_zero else '(0'}, 1], got {value!r}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; known: {', '.join(choices)}")


def check_inputs(model: nn.Module, clean: ImageData, trigger: Trigger | None, test: ImageData | None,
                 aux: ImageData | None = None) -> None:
    """One clear UserError for data a repair cannot work with."""
    if clean is None or len(clean) == 0:
        raise UserError("repair needs some clean labelled data (got none)")
    if len(torch.unique(clean.y)) < 2:
        raise UserError("the clean data holds a single class; repair needs images of several classes")
    for name, d in (("test", test), ("auxiliary", aux)):
        if d is not None and d.input_shape != clean.input_shape:
            raise UserError(f"{name} data has images {d.input_shape} but the clean data has {clean.input_shape}")
    if trigger is not None:
        check_trigger_fits(trigger, clean.input_shape, clean.num_classes)


# ---------------------------------------------------------------- orchestration

@dataclass
class Context:
    """What a method's `_run` gets: the copy it may change, the data, the device and the RNG."""

    model: nn.Module
    clean: ImageData
    trigger: Trigger | None
    aux: ImageData | None
    device: torch.device
    generator: torch.Generator
    seed: int


class Repairer:
    """Shared `.repair` orchestration; subclasses set `name` and implement `_run(ctx) -> extra`.

    `_run` changes `ctx.model` in place and returns a dict for `Repair.extra`. It may return
    `{"trigger": t}` (key removed from extra) to say which trigger measured the attack
    success rate when the caller gave none (e.g. a reconstructed one).

    Every result says which trigger its attack success rates were measured with:
    `extra["attack_success_rate_trigger"]` is "real" (the attack's own trigger),
    "reconstructed" (then `extra["trigger_reconstructed_by"]` names who reconstructed it),
    "given" (a trigger file that does not say who made it) or None (no trigger: no attack
    success rate).
    """

    name = "repairer"
    seed: int = 0
    device: str = "auto"

    def repair(self, model: nn.Module, clean_data: ImageData, *, trigger: Trigger | None = None,
               test: ImageData | None = None, aux_data: ImageData | None = None,
               trigger_reconstructed_by: str | None = None) -> Repair:
        """Repair a copy of `model` using `clean_data` (N, C, H, W) in [0, 1] and its labels.

        Args:
            model: the suspect classifier; never modified.
            clean_data: the little clean labelled data the defender has.
            trigger: the attack's trigger, when known (or reconstructed by `scan`), used to
                measure the attack success rate before and after; some methods also use it.
            test: held-out data for the before/after evaluation (default: `clean_data`).
            aux_data: unlabelled in-distribution images (labels ignored), for methods that use them.
            trigger_reconstructed_by: None when `trigger` is the attack's real trigger; else who
                reconstructed it (e.g. "scan"), which the result and its reports then say.

        Returns:
            `Repair` with before/after `Evaluation`s, seconds, method details in `extra`,
            and the repaired copy on `.model` (eval mode).
        """
        check_inputs(model, clean_data, trigger, test, aux_data)
        kinds = getattr(self, "kinds", ("image", "tabular", "text"))
        if clean_data.kind not in kinds:
            raise UserError(f"{self.name} works on {' and '.join(kinds)} data only, not {clean_data.kind}")
        device = resolve_device(self.device)
        gen = torch.Generator().manual_seed(self.seed)
        from poisonguard.models.handle import as_eager, copy_module

        model = as_eager(model, clean_data.x[:2])  # ScriptModule / exported module -> eager (hooks, eval, copy)
        if not any(p.is_floating_point() for p in model.parameters()):
            raise UserError(f"{self.name}: the model has no weights to change (its file stores them as constants "
                            "of the graph); save it as a state dict, safetensors, TorchScript or ONNX with its "
                            "weights as initializers")
        work = copy_module(model).to(device).eval()
        for p in work.parameters():
            p.requires_grad_(True)
        eval_set = test if test is not None else clean_data
        ctx = Context(work, clean_data, trigger, aux_data, device, gen, self.seed)
        start = time.perf_counter()
        with seeded(self.seed):  # what a method cannot seed through ctx.generator, without touching the caller's RNG
            extra: dict[str, Any] = dict(self._run(ctx) or {})
        seconds = time.perf_counter() - start
        work.eval()
        own = extra.pop("trigger", None)
        asr_trigger = trigger if trigger is not None else own
        if trigger is not None and trigger_reconstructed_by is None:
            from poisonguard.report.evaluation import trigger_word

            # a trigger file scan wrote says so, though it came by --trigger rather than --from-scan
            extra["attack_success_rate_trigger"] = trigger_word(trigger)
            if extra["attack_success_rate_trigger"] == "reconstructed":
                extra["trigger_reconstructed_by"] = "scan"  # the only writer of reconstructed trigger files
        elif asr_trigger is not None:
            extra["attack_success_rate_trigger"] = "reconstructed"
            extra["trigger_reconstructed_by"] = trigger_reconstructed_by if trigger is not None else self.name
        else:
            extra["attack_success_rate_trigger"] = None
        before = evaluate(model, eval_set, asr_trigger)  # predict() restores the model's mode
        after = evaluate(work, eval_set, asr_trigger)
        extra.setdefault("evaluated_on", "test" if test is not None else "clean_data")
        extra["clean_samples"] = len(clean_data)
        extra["hyperparameters"] = self.hyperparameters()
        log.info("%s: clean accuracy %.3f -> %.3f, attack success %s -> %s%s (%.1fs)", self.name,
                 before.clean_accuracy, after.clean_accuracy, _fmt(before), _fmt(after),
                 f" ({extra['attack_success_rate_trigger']} trigger)" if asr_trigger is not None else "", seconds)
        return Repair(method=self.name, seconds=seconds, before=before, after=after, extra=extra, model=work.cpu())

    def _run(self, ctx: Context) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def _fmt(ev: Evaluation) -> str:
    return "n/a" if ev.attack_success_rate is None else f"{ev.attack_success_rate:.3f}"


# ---------------------------------------------------------------- training helpers

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def make_optimizer(model: nn.Module, *, optimizer: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def label_entropy(y: torch.Tensor, num_classes: int) -> float:
    """Cross-entropy (nats) of always predicting the class shares of `y`: a model that learnt nothing else."""
    share = torch.bincount(y.reshape(-1).long().cpu(), minlength=num_classes).double()
    share = share[share > 0] / share.sum()
    return float(-(share * share.log()).sum()) if len(share) > 1 else math.log(2)


def _divergence_hint(model: nn.Module) -> str:
    """What to do about a fine-tune that diverged at every rate."""
    from poisonguard.models.wrappers import InputAdapter

    if any(isinstance(m, InputAdapter) and m.log_outputs for m in model.modules()):
        # the log of a saturated softmax is flat: no rate makes the loss fall
        return ("the model ends in a softmax (it outputs probabilities), and where those saturate no gradient "
                "flows at any learning rate: save the model without its final softmax (returning logits)")
    return "lower the learning rate"


def finetune(model: nn.Module, data: ImageData, *, epochs: int, lr: float, batch_size: int, generator: torch.Generator,
             device: torch.device, optimizer: str = "sgd", weight_decay: float = 5e-4,
             schedule: Callable[[int], float] | None = None, loss_fn: LossFn | None = None,
             after_step: Callable[[], None] | None = None, desc: str = "fine-tune", max_retries: int = 3,
             loss_scale: float = 1.0, info: dict[str, Any] | None = None,
             augment: Callable[[torch.Tensor], torch.Tensor] | None = None, warmup_epochs: float = 0.0,
             clip_norm: float | None = None) -> list[float]:
    """Train `model` in place for `epochs` on `data`; return the mean loss of each epoch.

    `loss_fn(model, x, y)` replaces plain cross-entropy (methods add their regularisers
    there); `schedule(epoch)` multiplies the learning rate; `after_step` runs after every
    optimiser step (e.g. to keep pruned weights at zero). Batch-norm statistics are
    updated, as in ordinary fine-tuning. `augment(x)` transforms each batch's images before
    `loss_fn` sees them (e.g. `random_shift`). The learning rate rises linearly from 0 over
    the first `warmup_epochs` (a large rate applied at once to a sharp, converged minimum
    makes the loss spike and forget clean knowledge along with the backdoor), and `clip_norm`
    caps the gradient norm of every step for the same reason.

    A run that diverges (a non-finite loss, or the epoch loss above both what predicting the class
    shares alone gives, the labels' entropy, and the cross-entropy before training, times
    `loss_scale` for losses that add several terms, at the end or for a quarter of the epochs in a row; a
    shorter spike is allowed) is undone and restarted with half the learning rate, up to
    `max_retries` times; `info` (if given) records the learning rate finally used and the
    number of restarts. The loss before training matters for a model trained from scratch
    (retrain, distillation): a short run that has not yet reached the entropy is under-trained,
    not diverged, and halving its rate would only make it more so.
    """
    snapshot = copy.deepcopy(model.state_dict())
    # Not 0.9 log K: on a table whose columns say little about the label (visits to a doctor
    # from insurance columns) a sound model ends just under the label entropy, 0.95 log K there.
    chance = max(label_entropy(data.y, data.num_classes), _cross_entropy(model, data, batch_size=batch_size,
                                                                        device=device)) * loss_scale
    for attempt in range(max_retries + 1):
        losses = _finetune_once(model, data, epochs=epochs, lr=lr, batch_size=batch_size, generator=generator,
                                device=device, optimizer=optimizer, weight_decay=weight_decay, schedule=schedule,
                                loss_fn=loss_fn, after_step=after_step, desc=desc, stop_above=chance, augment=augment,
                                warmup_epochs=warmup_epochs, clip_norm=clip_norm)
        if losses is not None:
            break
        model.load_state_dict(snapshot)
        if attempt < max_retries:  # the last failure restarts nothing
            log.warning("%s diverged at learning rate %g; restarting at %g", desc, lr, lr / 2)
            lr /= 2
    else:
        raise UserError(f"{desc} diverged even at learning rate {lr:g}; {_divergence_hint(model)}")
    if info is not None:
        info.update({"lr_used": lr, "lr_restarts": attempt})
    return losses


def _cross_entropy(model: nn.Module, data: ImageData, *, batch_size: int, device: torch.device) -> float:
    """The cross-entropy of `model` on `data` as it stands, before any step."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for sl in batches(len(data), batch_size):
            logits = model(data.x[sl].to(device))
            total += float(F.cross_entropy(logits, data.y[sl].to(device), reduction="sum"))
    model.train(was_training)
    return total / max(len(data), 1)


def _finetune_once(model, data, *, epochs, lr, batch_size, generator, device, optimizer, weight_decay, schedule,
                   loss_fn, after_step, desc, stop_above, augment=None, warmup_epochs=0.0,
                   clip_norm=None) -> list[float] | None:
    """One fine-tuning run; None if it collapsed (a non-finite epoch loss, or the epoch loss above
    `stop_above` for `patience` epochs in a row or at the end), else the epoch losses."""
    loss_fn = loss_fn or (lambda m, x, y: F.cross_entropy(m(x), y))
    opt = make_optimizer(model, optimizer=optimizer, lr=lr, weight_decay=weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    x_all, y_all = data.x.to(device), data.y.to(device)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    patience = max(3, epochs // 4)
    warmup_steps = warmup_epochs * steps_per_epoch
    losses = []
    step = 0
    model.train()
    for epoch in progress(range(epochs), total=epochs, desc=desc):
        epoch_lr = lr * (schedule(epoch) if schedule else 1.0)
        order = torch.randperm(len(data), generator=generator).to(device)
        total = 0.0
        for sl in batches(len(data), batch_size):
            idx = order[sl]
            step += 1
            for group in opt.param_groups:
                group["lr"] = epoch_lr * (min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0)
            x = x_all[idx] if augment is None else augment(x_all[idx])
            loss = loss_fn(model, x, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            opt.step()
            if after_step is not None:
                after_step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(data))
        # A large learning rate may spike the loss for an epoch or two and recover (that is
        # how it leaves the backdoor's basin); only a run stuck near chance level has collapsed.
        stuck = len(losses) >= patience and all(v > stop_above for v in losses[-patience:])
        if not math.isfinite(losses[-1]) or stuck:
            model.eval()
            return None
    model.eval()
    return None if losses and losses[-1] > stop_above else losses


def set_optimiser(repairer: Any, *, epochs: int, lr: float, batch_size: int, optimizer: str, weight_decay: float,
                  allow_zero_epochs: bool = False) -> None:
    """Check and store the fine-tuning optimiser settings every repairer takes."""
    check_positive("epochs", epochs, integer=True, allow_zero=allow_zero_epochs)
    check_positive("lr", lr)
    check_positive("batch_size", batch_size, integer=True)
    check_choice("optimizer", optimizer, ("sgd", "adam"))
    check_positive("weight_decay", weight_decay, allow_zero=True)
    repairer.epochs, repairer.lr, repairer.batch_size = epochs, lr, batch_size
    repairer.optimizer, repairer.weight_decay = optimizer, weight_decay


def set_finetune_aids(repairer: Any, *, shift: int, distill: float, temperature: float, warmup_epochs: float,
                      clip_norm: float) -> None:
    """Check and store the fine-tuning aids the trigger-agnostic repairers share (see `finetune`,
    `shifter`, `Teacher`): 0 switches shift, distillation, warm-up or clipping off."""
    check_positive("shift", shift, integer=True, allow_zero=True)
    check_positive("distill", distill, allow_zero=True)
    check_positive("temperature", temperature)
    check_positive("warmup_epochs", warmup_epochs, allow_zero=True)
    check_positive("clip_norm", clip_norm, allow_zero=True)
    repairer.shift, repairer.distill, repairer.temperature = shift, distill, temperature
    repairer.warmup_epochs, repairer.clip_norm = warmup_epochs, clip_norm


def random_shift(x: torch.Tensor, generator: torch.Generator, *, max_shift: int) -> torch.Tensor:
    """Translate each image of x (N, C, H, W) by up to `max_shift` pixels along each axis, zero-filled.

    The pad-and-random-crop augmentation of standard image training: with a few hundred
    clean images, fine-tuning without it overfits them and loses clean accuracy.
    """
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # contiguous: a strided result keeps its layout through a convolution, and a model that
    # flattens with x.view(n, -1) (the classic pytorch-cifar style) then fails
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def shifter(pixels: int, generator: torch.Generator):
    """`augment` callable for `finetune`: random shifts of up to `pixels` (None when 0)."""
    if pixels <= 0:
        return None
    # Shifting is for images; table rows and token ids pass unchanged.
    return lambda x: random_shift(x, generator, max_shift=pixels) if x.ndim == 4 else x


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of temperature-softened outputs, times T^2 (Hinton et al., 2015).

    Logits (N, K). The T^2 keeps the gradient's scale independent of the temperature.
    """
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


class Teacher:
    """A frozen copy of the suspect model whose outputs on clean (augmented) images keep its clean behaviour.

    Distilling them (Hinton et al., 2015) gives the few clean images the suspect model's full
    soft labels instead of one-hot ones; the trigger never appears in clean images, so the
    backdoor is not what is passed on. Build it before hooking the model: the copy keeps
    whatever forward hooks the model has at that moment.
    """

    def __init__(self, model: nn.Module, *, temperature: float) -> None:
        from poisonguard.models.handle import copy_module

        self.model = copy_module(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.temperature = temperature

    def loss(self, student_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.model(x)
        return distillation_loss(student_logits, target, self.temperature)


def cosine(epochs: int) -> Callable[[int], float]:
    """Cosine decay from 1 to near 0 over `epochs` (multiplier for the base learning rate)."""
    return lambda e: 0.5 * (1 + math.cos(math.pi * e / max(1, epochs)))


# ---------------------------------------------------------------- layers

def named_layers(model: nn.Module, kinds: tuple[type, ...]) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds) and name}


def execution_order(model: nn.Module, sample: torch.Tensor, kinds: tuple[type, ...]) -> list[str]:
    """Names of the modules of `kinds` in the order one forward pass calls them."""
    from poisonguard.models.handle import hooks_or_raise

    hooks_or_raise(model, "this method")
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: order.append(n))
               for name, m in named_layers(model, kinds).items()]
    try:
        with torch.no_grad():
            model.eval()(sample)
    finally:
        for h in handles:
            h.remove()
    seen: list[str] = []
    for n in order:
        if n not in seen:
            seen.append(n)
    return seen


def last_linear(model: nn.Module, sample: torch.Tensor) -> tuple[str, nn.Linear]:
    """The classifier's output layer (the last Linear one forward pass calls)."""
    order = execution_order(model, sample, (nn.Linear,))
    if not order:
        raise UserError("the model has no Linear output layer to work on")
    return order[-1], dict(model.named_modules())[order[-1]]
