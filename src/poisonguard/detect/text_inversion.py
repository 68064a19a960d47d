"""Trigger inversion for text models in embedding space (after DBS: Shen et al., "Constrained
Optimization with Dynamic Bound-Scaling for Effective NLP Backdoor Defense", ICML 2022).

Words are discrete, so the trigger is relaxed: each of `trigger_len` inserted slots is a
distribution over the vocabulary, softmax(theta / tau), whose embedding is the distribution's
mix of the model's embedding rows. For every candidate target class the mix is optimised to
send clean inputs of the other classes to that class (cross-entropy), with the temperature
tau lowered as the optimisation goes (DBS's bound scaling: a high temperature explores, a low
one forces the mix towards single words). The result is then made discrete (the most likely
word per slot, and the best of the `candidates` most likely single words), and the per-class
statistic is how often the discrete trigger FAILS to flip the inputs: a backdoor's target
flips almost all inputs with one rare word, other classes far fewer. The verdict
(`detect/verdict.py`) turns these sizes into the calibrated one-sided index, as it does
Neural Cleanse's mask sizes.

The trigger goes in at the front (the first `trigger_len` positions, the rest shifted), which
a position-free insertion backdoor answers as well as anywhere. The model is reached through
a forward hook on its `nn.Embedding` (named by `embedding`), so any module taking token ids
works; the model itself is not changed.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.data.tokenizer import PAD, SPECIALS, UNK
from poisonguard.detect.base import check_number, device_for, make_detection
from poisonguard.errors import UserError
from poisonguard.registry import Registry

# Text detectors are kept apart from the image DETECTORS (whose conformance tests feed images).
TEXT_DETECTORS: Registry[type] = Registry("text detection method")


def check_text_inputs(ids: torch.Tensor, labels: torch.Tensor, *, words: int, what: str, min_rows: int) -> None:
    """UserError unless ids are (N, L) token rows, one label each, N >= min_rows, with room for `words` inserted words."""
    if ids.ndim != 2 or len(ids) != len(labels) or len(ids) < min_rows:
        raise UserError(f"{what} needs at least {min_rows} clean token id row(s) (N, L) with one label per row")
    if ids.shape[1] <= words:
        raise UserError(f"inputs of {ids.shape[1]} tokens leave no room for {words} inserted word(s)")


@TEXT_DETECTORS.register("text_inversion")
class TextTriggerInversion:
    """Per-class relaxed-word trigger inversion; `detect(model, ids, labels, ...) -> Detection`.

    Args:
        trigger_len: inserted slots (1 finds a rare-word trigger; a sentence trigger is
            answered by its strongest words).
        steps, lr: Adam steps on the slot logits, and their learning rate.
        tau_start, tau_end: the temperature's geometric schedule.
        max_inputs: clean inputs (outside the candidate class) the trigger must flip.
        candidates: most likely words per class tried one by one when discretising.
        floor: added to the unflipped share before logs are taken (see `detect`).

    Defaults (80 steps, 64 inputs, floor 0.1) were chosen on the fortunes corpus's seed-0 models:
    one slot finds a rare word but not a sentence trigger, whose model answers an n-gram
    (`text_phrase`, 4 slots, is the scan's second method for that).
    """

    name = "text_inversion"
    paper = "Shen et al., ICML 2022 (DBS)"
    needs_data = True

    def __init__(self, *, trigger_len: int = 1, steps: int = 80, lr: float = 0.5, tau_start: float = 1.0,
                 tau_end: float = 0.05, max_inputs: int = 64, candidates: int = 8, batch_size: int = 160,
                 floor: float = 0.1, seed: int = 0, device: str = "auto") -> None:
        check_number("trigger_len", trigger_len, low=1, high=16, integer=True)
        check_number("steps", steps, low=1, integer=True)
        check_number("lr", lr, low=1e-6)
        check_number("tau_start", tau_start, low=1e-4)
        check_number("tau_end", tau_end, low=1e-4, high=tau_start)
        check_number("max_inputs", max_inputs, low=2, integer=True)
        check_number("candidates", candidates, low=1, integer=True)
        check_number("batch_size", batch_size, low=1, integer=True)
        check_number("floor", floor, low=1e-6, high=1.0)
        self.floor = float(floor)
        self.trigger_len, self.steps, self.lr = int(trigger_len), int(steps), float(lr)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.max_inputs, self.candidates, self.batch_size = int(max_inputs), int(candidates), int(batch_size)
        self.seed, self.device = int(seed), device

    def detect(self, model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
               embedding: nn.Embedding, vocab: tuple[str, ...] | None = None):
        """Invert a trigger for every class; sizes = 1 - the discrete trigger's flip rate + floor."""
        check_text_inputs(ids, labels, words=self.trigger_len, what="text inversion", min_rows=1)
        start = time.perf_counter()
        device = device_for(self.device)
        model, embedding = _frozen_copy(model, embedding, device)
        gen = torch.Generator().manual_seed(self.seed)
        sizes, words, flips = [], [], []
        for target in range(num_classes):
            pool = torch.nonzero(labels != target).flatten()
            if len(pool) < 2:
                raise UserError(f"class {target}: fewer than 2 clean inputs of other classes to invert a trigger on")
            pick = pool[torch.randperm(len(pool), generator=gen)[: self.max_inputs]]
            x = self._with_slots(ids[pick]).to(device)
            theta = self._optimise(model, embedding, x, target, gen)
            best_rate, best_words = self._discretise(model, x, theta, target)
            # The floor keeps log sizes finite for a perfect flip and stops near-perfect flips of a
            # naturally easy class (0.02 vs 0.05 unflipped) from reading as a 2.5x difference.
            sizes.append(1.0 - best_rate + self.floor)
            flips.append(best_rate)
            words.append([vocab[w] if vocab and w < len(vocab) else int(w) for w in best_words])
        index = torch.tensor(sizes, dtype=torch.float64)
        from poisonguard.detect.anomaly import log_lower_mad_index

        mad = log_lower_mad_index(index)
        flagged = [int(c) for c in torch.nonzero(mad > 2.0).flatten()]
        extra = {"trigger_words": words, "flip_rate": [round(float(f), 4) for f in flips], "trigger_len": self.trigger_len,
                 "steps": self.steps, "inputs": min(self.max_inputs, len(ids))}
        return make_detection(self.name, index=mad, flagged=flagged, start=start, sizes=index, masks=None,
                              patterns=None, threshold=2.0, extra=extra)

    def _with_slots(self, ids: torch.Tensor) -> torch.Tensor:
        k = self.trigger_len
        slots = torch.full((len(ids), k), UNK, dtype=torch.long)
        return torch.cat([slots, ids[:, : ids.shape[1] - k]], 1)

    def _forward_soft(self, model, embedding, x, soft):
        """Model logits with the first slots' embeddings replaced by `soft` (k, D)."""
        def hook(_m, _inp, out):
            out = out.clone()
            out[:, : soft.shape[0]] = soft.to(out.dtype)
            return out

        handle = embedding.register_forward_hook(hook)
        try:
            return model(x)
        finally:
            handle.remove()

    def _optimise(self, model, embedding, x, target, gen) -> torch.Tensor:
        weight = embedding.weight.detach()
        v = weight.shape[0]
        theta = (0.01 * torch.randn(self.trigger_len, v, generator=gen)).to(weight.device).requires_grad_(True)
        banned = torch.zeros(v, dtype=torch.bool, device=weight.device)
        banned[[PAD, UNK][: min(len(SPECIALS), v)]] = True  # padding and unknown are no words to insert
        opt = torch.optim.Adam([theta], lr=self.lr)
        y = torch.full((len(x),), target, dtype=torch.long, device=x.device)
        for step in range(self.steps):
            tau = self.tau_start * (self.tau_end / self.tau_start) ** (step / max(1, self.steps - 1))
            p = torch.softmax(theta.masked_fill(banned, -1e9) / tau, dim=1)
            for sl in _slices(len(x), self.batch_size):
                loss = F.cross_entropy(self._forward_soft(model, embedding, x[sl], p @ weight), y[sl])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return theta.detach().masked_fill(banned, -1e9)

    @torch.no_grad()
    def _discretise(self, model, x, theta, target) -> tuple[float, list[int]]:
        """The flip rate of the best discrete trigger: the argmax words, or one of the top single words."""
        trials = [theta.argmax(1).tolist()]
        top = theta.max(0).values.topk(min(self.candidates, theta.shape[1])).indices.tolist()
        trials += [[w] * self.trigger_len for w in top]
        best = (-1.0, trials[0])
        for words in trials:
            xt = x.clone()
            xt[:, : self.trigger_len] = torch.tensor(words, dtype=torch.long, device=x.device)
            rate = float((_predict(model, xt, self.batch_size) == target).float().mean())
            if rate > best[0]:
                best = (rate, words)
        return best


@TEXT_DETECTORS.register("text_phrase")
class TextPhraseInversion(TextTriggerInversion):
    """The same inversion with 4 slots: a sentence trigger answers an n-gram, not one word."""

    name = "text_phrase"

    def __init__(self, *, trigger_len: int = 4, **kwargs) -> None:
        super().__init__(trigger_len=trigger_len, **kwargs)


def _frozen_copy(model: nn.Module, embedding: nn.Embedding, device) -> tuple[nn.Module, nn.Embedding]:
    """An eval-mode copy without gradients on its weights, and the copy's embedding layer."""
    import copy

    name = next((n for n, m in model.named_modules() if m is embedding), None)
    if name is None:
        raise UserError("the embedding layer given is not part of the model")
    clone = copy.deepcopy(model).to(device).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone, dict(clone.named_modules())[name]


def _slices(n: int, size: int):
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _predict(model, x, batch_size):
    return torch.cat([model(x[sl]).argmax(1) for sl in _slices(len(x), batch_size)])
