"""Attacks by malicious federated clients, used to test the aggregation rules.

An attack acts at two points of a round (both optional):

* `client_data(data, seed)`: what a malicious client trains on (data poisoning: backdoor
  triggers from `poisonguard.attacks`, flipped labels);
* `local_training(benign, own, n_clients, lr)`: optionally, a start and a proximal step for
  retraining the malicious clients once the benign updates are known (ALIE's backdoor
  training stays near the benign mean);
* `craft(own, benign, generator)`: what malicious clients send, given their own honest-looking
  updates (m, d) and, for omniscient attacks, the benign clients' updates (b, d).

Registered in `FL_ATTACKS`; `make_attack(name, input_shape=..., num_classes=..., data=...)` builds one.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Callable

import torch

from poisonguard.attacks import badnets_trigger, flip_labels, poison_dataset
from poisonguard.attacks.triggers import Trigger
from poisonguard.data import ImageData
from poisonguard.errors import UserError
from poisonguard.registry import Registry

FL_ATTACKS: Registry[type] = Registry("federated attack")


class FLAttack:
    """Base: honest behaviour. Subclasses override `client_data` and/or `craft`.

    Attributes:
        trigger: the backdoor trigger when the attack plants one (ASR is measured with it).
    """

    name = "none"
    trigger: Trigger | None = None

    def client_data(self, data: ImageData, *, seed: int = 0) -> ImageData:
        return data

    def local_training(self, benign: torch.Tensor, own: torch.Tensor, *, n_clients: int, lr: float
                       ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]] | None:
        """Retrain the malicious clients: (start update (d,), prox on (k, d) updates applied
        after every local SGD step of rate `lr`). None (the default): keep plain local training."""
        return None

    def craft(self, own: torch.Tensor, benign: torch.Tensor, *, generator: torch.Generator,
              n_clients: int) -> torch.Tensor:
        return own

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **{k: v for k, v in vars(self).items() if isinstance(v, (int, float, str))}}


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)


@FL_ATTACKS.register("none")
class NoAttack(FLAttack):
    """No attack: malicious clients behave honestly (the attack-free baseline)."""

    def __init__(self, **_: Any) -> None:
        pass


PATCH_ATTACKS = ("backdoor", "model_replacement")  # the _Backdoor family: a trigger stamped on inputs


class _Backdoor(FLAttack):
    """Shared data poisoning: stamp a trigger on `poison_rate` of the client's data.

    Images get a BadNets patch; tables (given as `data`, whose observed ranges bound the
    trigger) Tabdoor's trigger, 3 seeded numeric features set to their maximum, as `attack
    tabular-trigger` plants it. Text has no such trigger here and is refused in one line.
    """

    def __init__(self, *, input_shape: tuple[int, int, int], target: int = 0, poison_rate: float = 0.5,
                 patch_size: int = 4, data: ImageData | None = None, seed: int = 0, **_: Any) -> None:
        tabular = data is not None and data.kind == "tabular"
        _check(len(input_shape) == 3 or tabular,
               f"the {self.name} attack stamps a trigger on images or table rows; this data's inputs are "
               f"{tuple(input_shape)} ({data.kind if data is not None else 'not images'}): choose one without "
               f"a trigger ({', '.join(n for n in attack_names() if n not in (*PATCH_ATTACKS, 'alie'))}, "
               f"or alie with --attack-opt backdoor=false)")
        _check(0 < poison_rate <= 1, f"poison_rate must lie in (0, 1], got {poison_rate}")
        self.target, self.poison_rate, self.patch_size = int(target), float(poison_rate), int(patch_size)
        if tabular:
            from poisonguard.attacks.tabular import tabular_trigger

            self.trigger = tabular_trigger(data, target=self.target, seed=seed)
        else:
            self.trigger = badnets_trigger(input_shape, target=self.target, size=self.patch_size)

    def client_data(self, data: ImageData, *, seed: int = 0) -> ImageData:
        eligible = int((data.y != self.target).sum())
        rate = min(self.poison_rate, eligible / max(len(data), 1))
        return poison_dataset(data, self.trigger, rate=rate, seed=seed).data


@FL_ATTACKS.register("backdoor")
class DataPoisoningBackdoor(_Backdoor):
    """Malicious clients train on data with a BadNets trigger and send the honest update (Gu et al., 2017)."""

    name = "backdoor"


@FL_ATTACKS.register("model_replacement")
class ModelReplacement(_Backdoor):
    """Model replacement / boosting (Bagdasaryan et al., 2020).

    Each attacker trains on backdoored data and scales its update by gamma so that the
    average over n clients is pulled to its backdoored model: gamma = n / m by default
    (n clients, m attackers, server learning rate 1).
    """

    name = "model_replacement"

    def __init__(self, *, boost: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check(boost is None or boost > 0, f"boost must be positive, got {boost}")
        self.boost = boost

    def craft(self, own, benign, *, generator, n_clients):
        gamma = self.boost if self.boost is not None else n_clients / max(own.shape[0], 1)
        return own * gamma


@FL_ATTACKS.register("sign_flip")
class SignFlip(FLAttack):
    """Sign flipping: send -scale times the honest update (Damaskinos et al., 2018; Allen-Zhu et al., 2021)."""

    name = "sign_flip"

    def __init__(self, *, scale: float = 4.0, **_: Any) -> None:
        _check(scale > 0, f"scale must be positive, got {scale}")
        self.scale = float(scale)

    def craft(self, own, benign, *, generator, n_clients):
        return -self.scale * own


@FL_ATTACKS.register("gaussian")
class GaussianUpdates(FLAttack):
    """Gaussian attack: send N(0, sigma^2) noise instead of an update (Blanchard et al., 2017)."""

    name = "gaussian"

    def __init__(self, *, sigma: float = 0.1, **_: Any) -> None:
        _check(sigma > 0, f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)

    def craft(self, own, benign, *, generator, n_clients):
        return self.sigma * torch.randn(own.shape, generator=generator, dtype=own.dtype).to(own.device)


def alie_z(n: int, m: int) -> float:
    """ALIE's z_max (Baruch et al., 2019): s = floor(n/2 + 1) - m; z = Phi^-1((n - s) / n)."""
    s = math.floor(n / 2 + 1) - m
    p = (n - s) / n
    return NormalDist().inv_cdf(min(max(p, 1e-6), 1 - 1e-6))


@FL_ATTACKS.register("alie")
class ALIE(_Backdoor):
    """"A little is enough" (Baruch, Baruch & Goldberg, 2019).

    Attackers estimate the per-coordinate mean mu and std sigma of the benign updates and stay
    inside mu +- z sigma, where the robust rules cannot tell them apart (z from `alie_z`).

    Backdoor variant (`backdoor=True`, the default; the paper's backdooring algorithm): each
    attacker trains on its backdoored data starting from the benign mean update, with the loss
    alpha * CE + (1 - alpha) * l_delta, where l_delta = mean_j ((delta_j - mu_j) / sigma_j)^2
    keeps the update near the mean in units of sigma, so the backdoor is learnt in the
    coordinates the benign clients disagree on and survives the final clamp to mu +- z sigma.
    The paper states l_delta as a distance to the mean; measuring it in sigma units (the same
    units as the clamp) is our choice. `alpha=1` drops the term (train, then clamp).

    Untargeted variant (`backdoor=False`): send mu - z sigma, which drags every coordinate the
    same way.

    mu and sigma come from the benign clients' updates of the round (the omniscient estimate;
    the paper's attackers estimate them from their own clean data).
    """

    name = "alie"

    def __init__(self, *, backdoor: bool = True, z: float | None = None, alpha: float = 0.2,
                 project: bool = False, **kwargs: Any) -> None:
        self.backdoor = bool(backdoor)
        if self.backdoor:
            super().__init__(**kwargs)
        else:  # untargeted: no trigger to stamp, so any kind of input (text too)
            self.target, self.poison_rate, self.patch_size, self.trigger = int(kwargs.get("target", 0)), 0.0, 0, None
        _check(0 < alpha <= 1, f"alpha must lie in (0, 1], got {alpha}")
        _check(z is None or z > 0, f"z must be positive, got {z}")
        self.z, self.alpha, self.project = z, float(alpha), bool(project)

    def client_data(self, data, *, seed=0):
        return super().client_data(data, seed=seed) if self.backdoor else data

    @staticmethod
    def _moments(benign: torch.Tensor, own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = torch.cat([benign, own]) if benign.shape[0] < 2 else benign
        return pool.mean(0), pool.std(0)

    def local_training(self, benign, own, *, n_clients, lr):
        if not self.backdoor:
            return None
        mu, sigma = self._moments(benign, own)
        if self.project:
            z = self._z(n_clients, own.shape[0])
            return mu, lambda u: torch.maximum(torch.minimum(u, mu + z * sigma), mu - z * sigma)
        if self.alpha == 1:
            return None
        # Prox of (1-alpha)/alpha * mean_j ((u_j - mu_j)/sigma_j)^2 relative to the CE term; the
        # floor pins coordinates no benign client moved without dividing by zero.
        sigma = sigma.clamp_min(torch.finfo(sigma.dtype).tiny ** 0.25)
        rate = lr * 2 * (1 - self.alpha) / (self.alpha * mu.numel()) / sigma.square()
        shrink = rate / (1 + rate)
        return mu, lambda u: u + shrink * (mu - u)

    def _z(self, n_clients: int, m: int) -> float:
        return self.z if self.z is not None else alie_z(n_clients, m)

    def craft(self, own, benign, *, generator, n_clients):
        mu, sigma = self._moments(benign, own)
        z = self._z(n_clients, own.shape[0])
        if self.backdoor:
            return torch.maximum(torch.minimum(own, mu + z * sigma), mu - z * sigma)
        return (mu - z * sigma).expand_as(own).clone()


@FL_ATTACKS.register("ipm")
class InnerProductManipulation(FLAttack):
    """Inner-product manipulation (Xie, Koyejo & Gupta, 2020): send -epsilon times the benign mean."""

    name = "ipm"

    def __init__(self, *, epsilon: float = 0.5, **_: Any) -> None:
        _check(epsilon > 0, f"epsilon must be positive, got {epsilon}")
        self.epsilon = float(epsilon)

    def craft(self, own, benign, *, generator, n_clients):
        mean = benign.mean(0) if benign.shape[0] else own.mean(0)
        return (-self.epsilon * mean).expand_as(own).clone()


@FL_ATTACKS.register("label_flip")
class LabelFlipping(FLAttack):
    """Label-flipping clients (Tolpegin et al., 2020): every local label y becomes K - 1 - y."""

    name = "label_flip"

    def __init__(self, *, num_classes: int = 10, **_: Any) -> None:
        self.num_classes = int(num_classes)

    def client_data(self, data, *, seed=0):
        return data.with_(y=(self.num_classes - 1 - data.y).clone())


def attack_names() -> list[str]:
    return FL_ATTACKS.names()


def make_attack(name: str, *, input_shape: tuple[int, int, int], num_classes: int, data: ImageData | None = None,
                **options: Any) -> FLAttack:
    """Build a registered attack; options it does not use are ignored. `data` (the training part)
    lets a backdoor attack build a table's trigger inside its observed ranges."""
    cls = FL_ATTACKS.get(name)
    return cls(input_shape=input_shape, num_classes=num_classes, data=data, **options)


__all__ = ["FL_ATTACKS", "FLAttack", "alie_z", "attack_names", "flip_labels", "make_attack"]
