"""STRIP for text: superimposed texts (Gao et al., "STRIP", ACSAC 2019), or STRIP-ViTA's word
replacement (Gao et al., "Design and Evaluation of a Multi-Domain Trojan Detection Method on
Deep Neural Networks", IEEE TDSC 2021).

STRIP superimposes an input on clean inputs and measures the entropy of the model's
predictions over the copies: a trigger keeps forcing its target (low entropy), a clean input's
class is muddied by the overlay. Text cannot be added pixel by pixel; two perturbations:

- `mix` (the default): the text's words, all kept and in order, with a random clean text's
  words slotted in between (as far as the model's length allows, the clean text's words cut
  first): the analogue of superimposition, in which nothing of the input is lost;
- `replace` (STRIP-ViTA): every word is replaced with probability `replace` (0.5) by a word of
  a random clean text; the trigger itself is replaced as often, which blurs the test.

Measured on the Fortunes models of seed 0 (a rare-word and a sentence backdoor, 5% poison; the
choice was made there): at a 5% false-rejection rate `mix` rejected 97% and 98% of triggered
texts, `replace` at 0.5 88% and 78% (0.3: 94%, 98%; 0.7: 78%, 34%).
Limitation (as for images): STRIP needs the trigger to outweigh the text's own evidence. On a
synthetic corpus whose texts are 30% topic words the model's clean predictions resisted the
overlay as firmly as triggered ones (ROC-AUC 0.39-0.81 over 3 seeds); at 10% topic words
(closer to Fortunes' weak signal) it caught 78-90% at a 5% false-rejection rate.
The filter interface is `strip.StripFilter`'s: the threshold is the FRR quantile of clean
inputs' entropy and inputs below it are rejected.
"""

from __future__ import annotations

import numpy as np
import torch

from poisonguard.data.tokenizer import PAD
from poisonguard.errors import UserError
from poisonguard.sanitize.base import check_number
from poisonguard.utils import batches

PERTURBATIONS = ("mix", "replace")


def perturbed_copies(x: torch.Tensor, donors: torch.Tensor, *, draws: int, replace: float,
                     generator: torch.Generator) -> torch.Tensor:
    """(N * draws, L): each text `draws` times, each non-padding word replaced with probability
    `replace` by a non-padding word of a random donor text."""
    pool = donors[donors != PAD]
    if len(pool) == 0:
        raise UserError("the clean texts hold no words")
    copies = x.repeat_interleave(draws, 0).clone()
    swap = (torch.rand(copies.shape, generator=generator) < replace) & (copies != PAD)
    copies[swap] = pool[torch.randint(len(pool), (int(swap.sum()),), generator=generator)]
    return copies


def mixed_copies(x: torch.Tensor, donors: torch.Tensor, *, draws: int, generator: torch.Generator) -> torch.Tensor:
    """(N * draws, L): each text `draws` times, its words kept in order and a random donor text's
    words slotted in between at random, as far as the length L allows (the donor's are cut first)."""
    n, length = x.shape
    out = torch.zeros(n * draws, length, dtype=x.dtype)
    donor_rows = torch.randint(len(donors), (n * draws,), generator=generator)
    for k in range(n * draws):
        own = x[k // draws][x[k // draws] != PAD]
        other = donors[donor_rows[k]][donors[donor_rows[k]] != PAD][: max(0, length - len(own))]
        # A random choice of slots for the own words (sorted: their order stays), the donor's in the rest.
        is_own = torch.zeros(len(own) + len(other), dtype=torch.bool)
        is_own[torch.randperm(len(is_own), generator=generator)[: len(own)]] = True
        out[k, is_own.nonzero().squeeze(1)] = own
        out[k, (~is_own).nonzero().squeeze(1)] = other
    return out


@torch.no_grad()
def text_strip_entropy(model, x: torch.Tensor, donors: torch.Tensor, *, draws: int = 10, perturbation: str = "mix",
                       replace: float = 0.5, seed: int = 0, batch_size: int = 512) -> np.ndarray:
    """(N,) mean entropy (bits) of the model's predictions on `draws` perturbed copies of each text."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for sl in batches(len(x), max(1, batch_size // draws)):
        if perturbation == "mix":
            copies = mixed_copies(x[sl], donors, draws=draws, generator=gen)
        else:
            copies = perturbed_copies(x[sl], donors, draws=draws, replace=replace, generator=gen)
        p = torch.softmax(model(copies).float(), 1)
        h = -(p * torch.log2(p.clamp(min=1e-12))).sum(1)
        out.append(h.view(-1, draws).mean(1))
    return torch.cat(out).numpy() if out else np.zeros(0)


class TextStripFilter:
    """STRIP as an input filter on token ids: fit the threshold on clean texts, reject below it."""

    def __init__(self, *, draws: int = 10, perturbation: str = "mix", replace: float = 0.5, frr: float = 0.01,
                 seed: int = 0) -> None:
        check_number("draws", draws, low=1, integer=True)
        if perturbation not in PERTURBATIONS:
            raise UserError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {perturbation!r}")
        check_number("replace", replace, low=0, high=1, open_low=True)
        check_number("frr", frr, low=0, high=0.5, open_low=True)
        self.draws, self.perturbation, self.replace = int(draws), perturbation, float(replace)
        self.frr, self.seed = float(frr), int(seed)
        self.threshold: float | None = None
        self.clean_entropy: np.ndarray | None = None
        self._donors: torch.Tensor | None = None

    def fit(self, model, clean: torch.Tensor, donors: torch.Tensor) -> "TextStripFilter":
        """Set the threshold on `clean` texts perturbed with words of `donors` (other clean texts)."""
        if len(clean) < 20:
            raise UserError(f"STRIP's threshold needs at least 20 clean texts, got {len(clean)}")
        self._donors = donors
        self.clean_entropy = self.entropy(model, clean, seed=self.seed)
        self.threshold = float(np.quantile(self.clean_entropy, self.frr))
        return self

    def entropy(self, model, x: torch.Tensor, *, seed: int | None = None) -> np.ndarray:
        if self._donors is None:
            raise RuntimeError("call fit() first")
        return text_strip_entropy(model, x, self._donors, draws=self.draws, perturbation=self.perturbation,
                                  replace=self.replace, seed=self.seed + 1 if seed is None else seed)
