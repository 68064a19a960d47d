"""A fast federated-learning simulator: N clients, M malicious, any aggregator, any FL attack.

Clients' local SGD runs for all sampled clients at once: the model is called functionally
(`torch.func.functional_call`) with per-client parameters, and `torch.func.vmap(grad(loss))`
computes every client's gradient in one batched call (convolutions become grouped
convolutions). Models that vmap cannot batch (e.g. BatchNorm in training mode) fall back to
a plain loop over clients with the same batches, so both paths give the same numbers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from poisonguard.data import ImageData, Splits, per_class_subset
from poisonguard.errors import UserError
from poisonguard.federated.aggregators import Aggregator
from poisonguard.federated.attacks import FLAttack, NoAttack
from poisonguard.federated.input_stats import fit_federated_input_stats
from poisonguard.models import build_model
from poisonguard.results import Federated, RoundResult
from poisonguard.metrics import accuracy, trigger_effect
from poisonguard.utils import progress, resolve_device

log = logging.getLogger(__name__)


def split_clients(labels: np.ndarray, n_clients: int, *, dirichlet: float | None = None, seed: int = 0,
                  min_size: int = 10) -> list[np.ndarray]:
    """Index sets of `n_clients` clients: IID (equal random shares) or Dirichlet(alpha) per class.

    The Dirichlet split (Hsu, Qi & Brown, 2019) gives each class's samples to clients in
    proportions drawn from Dir(alpha); small alpha means very skewed clients. It is redrawn
    until every client has at least `min_size` samples.
    """
    n = len(labels)
    if n_clients < 1 or n_clients * min_size > n:
        raise UserError(f"cannot split {n} samples over {n_clients} clients (at least {min_size} each)")
    rng = np.random.default_rng(seed)
    if dirichlet is None:
        return [np.sort(part) for part in np.array_split(rng.permutation(n), n_clients)]
    if not dirichlet > 0:
        raise UserError(f"dirichlet alpha must be positive, got {dirichlet}")
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for label in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_clients, dirichlet))) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise UserError(f"Dirichlet({dirichlet}) split left a client with fewer than {min_size} samples; raise alpha")


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(flat: torch.Tensor, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split a flat (d,) or (k, d) vector into named tensors shaped like `template` (leading k kept)."""
    out, start = {}, 0
    lead = flat.shape[:-1]
    for name, p in template.items():
        out[name] = flat[..., start:start + p.numel()].reshape(*lead, *p.shape)
        start += p.numel()
    return out



def _is_largest_class(target: int, y: torch.Tensor) -> bool | None:
    """Whether the attack's target is the test data's largest class (None for all-to-all): a
    model answering it everywhere may be a table model's natural majority answer; answering a
    smaller class everywhere is a model the attackers took over."""
    if target < 0:
        return None
    counts = y.bincount()
    return bool(target < len(counts) and counts[target] == counts.max())

class LocalTrainer:
    """Local SGD (momentum 0.9) for many clients at once, vmapped or in a loop."""

    def __init__(self, model: nn.Module, *, lr: float, momentum: float = 0.9, vectorize: bool = True) -> None:
        self.model = model
        self.names = [n for n, _ in model.named_parameters()]
        self.template = {n: p.detach() for n, p in model.named_parameters()}
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.lr, self.momentum = lr, momentum
        self.vectorize = vectorize

        def loss(params, x, y):
            return F.cross_entropy(functional_call(self.model, (params, self.buffers), (x,)), y)

        self._grad = grad(loss)
        self._vgrad = vmap(self._grad)

    def train(self, start: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
              prox: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Run local SGD from the flat global parameters for k clients.

        Args:
            start: (d,) global parameters.
            xs: (k, steps, B, C, H, W) each client's batches; ys: (k, steps, B) labels.
            prox: optional map applied to the (k, d) parameters after every SGD step: the
                proximal step of an extra loss term or a projection onto a constraint set
                (a plain gradient step on a stiff quadratic would diverge).

        Returns:
            (k, d) clients' trained flat parameters.
        """
        if self.vectorize:
            try:
                return self._train_vmap(start, xs, ys, prox)
            except Exception as exc:  # vmap has no batching rule for some layers: loop instead
                log.warning("vmap over clients failed (%s: %s); falling back to a loop", type(exc).__name__, exc)
                self.vectorize = False
        return torch.stack([self._train_one(start, xs[i], ys[i], prox) for i in range(xs.shape[0])])

    def _train_vmap(self, start, xs, ys, prox=None):
        k = xs.shape[0]
        flat = start.expand(k, -1).clone()
        velocity = torch.zeros_like(flat)
        for step in range(xs.shape[1]):
            params = unflatten(flat, self.template)
            grads = self._vgrad(params, xs[:, step], ys[:, step])
            g = torch.cat([grads[n].reshape(k, -1) for n in self.names], dim=1)
            velocity.mul_(self.momentum).add_(g)
            flat -= self.lr * velocity
            if prox is not None:
                flat = prox(flat)
        return flat

    def _train_one(self, start, xs, ys, prox=None):
        flat = start.clone()
        velocity = torch.zeros_like(flat)
        for step in range(xs.shape[0]):
            grads = self._grad(unflatten(flat, self.template), xs[step], ys[step])
            g = torch.cat([grads[n].reshape(-1) for n in self.names])
            velocity.mul_(self.momentum).add_(g)
            flat -= self.lr * velocity
            if prox is not None:
                flat = prox(flat)
        return flat


@dataclass
class _Client:
    data: ImageData
    malicious: bool


class Simulator:
    """Federated training with malicious clients, one aggregator, per-round accuracy and ASR.

    Args:
        clients: number of clients N.
        malicious: number of malicious clients M (client ids 0..M-1).
        rounds: federated rounds R.
        dirichlet: None for IID splits, else the Dirichlet alpha of a non-IID split.
        sample_fraction: share of clients sampled each round (at least one).
        local_epochs: local passes over a client's data per round.
        batch_size: local batch size.
        lr: local SGD learning rate (momentum 0.9).
        arch: model architecture (default mnist_cnn for 1 channel, else lenet5).
        root_size: images per class in the server's clean root set (FLTrust).
        vectorize: train clients with vmap (True) or a plain loop (False); None picks vmap on
            CUDA and the loop on a CPU, where vmapped (grouped) convolutions measured slower.
        seed: every random choice.
        device: "auto", "cpu" or "cuda".
    """

    def __init__(self, *, clients: int = 20, malicious: int = 0, rounds: int = 10, dirichlet: float | None = None,
                 sample_fraction: float = 1.0, local_epochs: int = 1, batch_size: int = 32, lr: float = 0.02,
                 arch: str | None = None, root_size: int = 10, vectorize: bool | None = None, seed: int = 0,
                 device: str = "auto") -> None:
        if clients < 1:
            raise UserError(f"clients must be at least 1, got {clients}")
        if not 0 <= malicious <= clients:
            raise UserError(f"malicious must lie in [0, clients={clients}], got {malicious}")
        if rounds < 1:
            raise UserError(f"rounds must be at least 1, got {rounds}")
        if not 0 < sample_fraction <= 1:
            raise UserError(f"sample_fraction must lie in (0, 1], got {sample_fraction}")
        if local_epochs < 1 or batch_size < 1 or root_size < 1:
            raise UserError("local_epochs, batch_size and root_size must be at least 1")
        if not lr > 0:
            raise UserError(f"lr must be positive, got {lr}")
        self.clients, self.malicious, self.rounds = clients, malicious, rounds
        self.dirichlet, self.sample_fraction = dirichlet, sample_fraction
        self.local_epochs, self.batch_size, self.lr = local_epochs, batch_size, lr
        self.arch, self.root_size, self.vectorize = arch, root_size, vectorize
        self.seed, self.device = seed, device

    # ------------------------------------------------------------------ setup

    def build_model(self, splits: Splits) -> nn.Module:
        if splits.kind == "text":  # token ids: a built-in text classifier over the data's tokenizer
            from poisonguard.models.text import TEXT_ARCHITECTURES, build_text_model

            arch = self.arch or "text_cnn"
            if arch not in TEXT_ARCHITECTURES.names():
                raise UserError(f"text data takes the text architectures {', '.join(TEXT_ARCHITECTURES.names())}, "
                                f"not {arch!r}")
            return build_text_model(arch, vocab_size=len(splits.train.meta), num_classes=splits.num_classes,
                                    seed=self.seed)
        if self.arch is None and splits.kind != "image":
            from poisonguard.models.registry import default_architecture

            arch = default_architecture(splits.kind, splits.input_shape)  # its scaling: federated.input_stats
        else:
            arch = self.arch or ("mnist_cnn" if splits.input_shape[0] == 1 else "lenet5")
        return build_model(arch, num_classes=splits.num_classes, input_shape=splits.input_shape, seed=self.seed)

    def _clients(self, splits: Splits, attack: FLAttack) -> list[_Client]:
        parts = split_clients(splits.train.y.numpy(), self.clients, dirichlet=self.dirichlet, seed=self.seed)
        out = []
        for cid, idx in enumerate(parts):
            data = splits.train.subset(idx)
            bad = cid < self.malicious
            if bad:
                data = attack.client_data(data, seed=self.seed + cid)
            out.append(_Client(data, bad))
        return out

    def _batches(self, clients: list[_Client], ids: list[int], steps: int, gen: torch.Generator):
        """(k, steps, B, C, H, W) images and (k, steps, B) labels: each client cycles its own shuffled data."""
        xs, ys = [], []
        need = steps * self.batch_size
        for cid in ids:
            data = clients[cid].data
            reps = math.ceil(need / len(data))
            order = torch.cat([torch.randperm(len(data), generator=gen) for _ in range(reps)])[:need]
            xs.append(data.x[order].view(steps, self.batch_size, *data.input_shape))
            ys.append(data.y[order].view(steps, self.batch_size))
        return torch.stack(xs), torch.stack(ys)

    def _steps(self, sizes: list[int]) -> int:
        # Equal step counts let vmap batch clients; a typical client's epoch sets the count.
        return max(1, math.ceil(self.local_epochs * float(np.median(sizes)) / self.batch_size))

    # ------------------------------------------------------------------ running

    def pretrain(self, splits: Splits, rounds: int) -> torch.Tensor:
        """Flat parameters after `rounds` attack-free FedAvg rounds (a warm start for attacks
        that, like model replacement, strike a converging model)."""
        sim = Simulator(**{**self._config(), "malicious": 0, "rounds": rounds})
        result, flat = sim._run(splits, Aggregator("fedavg"), NoAttack(), None, evaluate=False)
        return flat

    def _config(self) -> dict[str, Any]:
        return dict(clients=self.clients, malicious=self.malicious, rounds=self.rounds, dirichlet=self.dirichlet,
                    sample_fraction=self.sample_fraction, local_epochs=self.local_epochs,
                    batch_size=self.batch_size, lr=self.lr, arch=self.arch, root_size=self.root_size,
                    vectorize=self.vectorize, seed=self.seed, device=self.device)

    def run(self, splits: Splits, aggregator: Aggregator | str, attack: FLAttack | None = None,
            initial: torch.Tensor | None = None) -> Federated:
        """Simulate `rounds` rounds; return per-round clean accuracy and backdoor ASR.

        Args:
            splits: train part is divided among clients; test part measures the global model.
            aggregator: an `Aggregator` or a registered name (f = number of malicious clients).
            attack: what malicious clients do (honest when None).
            initial: (d,) flat starting parameters (e.g. from `pretrain`); fresh model when None.
        """
        if isinstance(aggregator, str):
            aggregator = Aggregator(aggregator, f=self.malicious, seed=self.seed)
        result, _ = self._run(splits, aggregator, attack or NoAttack(), initial)
        return result

    def _run(self, splits, aggregator: Aggregator, attack: FLAttack, initial, *, evaluate: bool = True):
        device = resolve_device(self.device)
        start_time = time.perf_counter()
        model = self.build_model(splits)
        gen = torch.Generator().manual_seed(self.seed)
        noise_gen = torch.Generator().manual_seed(self.seed + 1)
        rng = np.random.default_rng(self.seed)
        clients = self._clients(splits, attack)
        # Before any training (LocalTrainer captures the buffers): the tables' mlp scaling.
        input_stats = fit_federated_input_stats(model, [c.data.x for c in clients])
        flat = flat_params(model) if initial is None else initial.detach().clone().float()
        if flat.shape != flat_params(model).shape:
            raise UserError(f"initial parameters have {flat.shape[0]} values, the model {flat_params(model).shape[0]}")
        model.to(device)
        flat = flat.to(device)
        vectorize = device.type == "cuda" if self.vectorize is None else self.vectorize
        trainer = LocalTrainer(model, lr=self.lr, vectorize=vectorize)
        steps = self._steps([len(c.data) for c in clients])
        root = per_class_subset(splits.train, per_class=self.root_size, seed=self.seed) \
            if "root_update" in aggregator.spec.needs else None
        k = max(1, round(self.sample_fraction * self.clients))
        rounds, train_seconds = [], 0.0
        for rnd in progress(range(1, self.rounds + 1), total=self.rounds, desc="fl rounds"):
            ids = sorted(rng.choice(self.clients, size=k, replace=False).tolist())
            xs, ys = self._batches(clients, ids, steps, gen)
            t0 = time.perf_counter()
            trained = trainer.train(flat, xs.to(device), ys.to(device))
            train_seconds += time.perf_counter() - t0
            updates = trained - flat
            bad = torch.tensor([clients[c].malicious for c in ids], device=device)
            if bad.any():
                retrain = attack.local_training(updates[~bad], updates[bad], n_clients=k, lr=self.lr)
                if retrain is not None:  # the attack retrains its clients from its own start, with its prox
                    begin, prox = retrain
                    t0 = time.perf_counter()
                    updates[bad] = trainer.train(flat + begin, xs[bad.cpu()].to(device), ys[bad.cpu()].to(device),
                                                 prox=lambda w: flat + prox(w - flat)) - flat
                    train_seconds += time.perf_counter() - t0
                updates[bad] = attack.craft(updates[bad], updates[~bad], generator=noise_gen, n_clients=k).to(updates)
            weights = torch.tensor([len(clients[c].data) for c in ids], dtype=flat.dtype, device=device)
            root_update = None
            if root is not None:
                rx, ry = self._batches([_Client(root, False)], [0], max(1, math.ceil(len(root) / self.batch_size)), gen)
                root_update = trainer.train(flat, rx.to(device), ry.to(device))[0] - flat
            agg = aggregator(updates, weights, root_update=root_update)
            flat = flat + agg.update
            if not evaluate:
                continue
            torch.nn.utils.vector_to_parameters(flat, model.parameters())
            acc = accuracy(model, splits.test)
            asr = None
            extra: dict[str, Any] = {"sampled": len(ids), "malicious_sampled": int(bad.sum())}
            if attack.trigger is not None:  # the ASR, and what the model sends to the target without the trigger
                effect = trigger_effect(model, splits.test, attack.trigger)
                asr = effect["triggered"]
                extra.update(untriggered_target_rate=effect["untriggered"], trigger_effect=effect["effect"],
                             target_is_largest_class=_is_largest_class(attack.trigger.target, splits.test.y))
            if agg.excluded:
                extra["excluded_nonfinite"] = [ids[i] for i in agg.excluded]
            if "selected" in agg.info:
                chosen = [ids[i] for i in agg.info["selected"]]
                extra["malicious_selected"] = sum(clients[c].malicious for c in chosen)
                extra["selected"] = len(chosen)
            rounds.append(RoundResult(round=rnd, clean_accuracy=acc, attack_success_rate=asr, extra=extra))
            log.info("round %d: clean accuracy %.3f%s", rnd, acc, "" if asr is None else f", ASR {asr:.3f}")
        extra = {"clients": self.clients, "malicious": self.malicious, "dirichlet": self.dirichlet,
                 "sample_fraction": self.sample_fraction, "local_epochs": self.local_epochs,
                 "local_steps": steps, "batch_size": self.batch_size, "lr": self.lr,
                 "vectorized": trainer.vectorize, "seconds": round(time.perf_counter() - start_time, 2),
                 "train_seconds": round(train_seconds, 2), "aggregator_hparams": dict(aggregator.hparams),
                 "attack_options": attack.describe()}
        if input_stats is not None:
            extra["input_statistics"] = input_stats
        return Federated(aggregator=aggregator.name, attack=attack.name, rounds=tuple(rounds), extra=extra), flat


def run_table(splits: Splits, simulator: Simulator, aggregators: list[str], attacks: list[str], *,
              warmup_rounds: int = 0, attack_options: dict[str, Any] | None = None,
              aggregator_options: dict[str, dict[str, Any]] | None = None,
              initial: torch.Tensor | None = None) -> list[Federated]:
    """Every aggregator against every attack from one shared warm start (attack-free FedAvg).

    A rule that cannot run in a setting (e.g. Bulyan with too many malicious clients) gets a
    `Federated` with no rounds and `extra["error"]` saying why, so the table shows the gap.
    """
    from poisonguard.federated.attacks import make_attack

    if initial is None and warmup_rounds > 0:
        initial = simulator.pretrain(splits, warmup_rounds)
    out = []
    for attack_name in attacks:
        for name in aggregators:
            attack = make_attack(attack_name, input_shape=splits.input_shape, num_classes=splits.num_classes,
                                 data=splits.train,
                                 **(attack_options or {}))
            try:
                agg = Aggregator(name, f=simulator.malicious, seed=simulator.seed,
                                 **(aggregator_options or {}).get(name, {}))
                result = simulator.run(splits, agg, attack, initial=initial)
            except ValueError as exc:
                log.warning("%s vs %s: %s", name, attack_name, exc)
                result = Federated(aggregator=name, attack=attack.name, rounds=(), extra={"error": str(exc)})
            out.append(result)
    return out
