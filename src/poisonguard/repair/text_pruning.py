"""Fine-pruning for text classifiers (Liu, Dolan-Gavitt & Garg, "Fine-Pruning", RAID 2018).

The paper prunes the last convolutional layer's channels that clean inputs leave dormant,
then fine-tunes on the clean data. A text model's last hidden units are the sentence
representation its head reads (the text CNN's max-pooled filters, the bag's hidden layer):
a rare-word or sentence trigger is answered by filters that fire on the trigger's n-grams
and stay quiet on clean text. Units are pruned in order of increasing mean activation on the
clean texts, in steps, while clean accuracy stays within `max_drop` of the start; the pruned
units' head columns are held at zero while the whole model is fine-tuned on the clean data,
then baked into the head's weights (the repaired model is an ordinary module, no hooks).

The embedding table is pruned the same way first (`prune_vocab`, on by default): a word the
clean texts never hold is a row no clean input activates, so its embedding is replaced by the
<unk> row, as the model would see a word outside its vocabulary. A rare-word trigger is such a
row by construction, and so are most words of an inserted sentence; the clean texts cannot
vouch for them, and the clean accuracy measured after says what it cost.

Given a trigger phrase that `sanitize` (or `scan`) found (`unlearn`), the fine-tuning also sees
clean texts with the phrase inserted and their true labels, so what pruning left of a sentence
trigger (whose common words no pruning can take away) is unlearned.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from poisonguard.errors import UserError
from poisonguard.sanitize.base import check_number


def _head(model: nn.Module) -> nn.Linear:
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise UserError("fine-pruning needs the model's final nn.Linear (its head) to prune the units it reads")
    return heads[-1]


class TextFinePruning:
    """`repair(model, clean) -> (model, info)`; `clean` is kind="text" data the defender trusts."""

    name = "text_fine_pruning"
    paper = "Liu, Dolan-Gavitt & Garg, RAID 2018"

    def __init__(self, *, max_prune: float = 0.9, step: float = 0.05, max_drop: float = 0.05, epochs: int = 5,
                 lr: float = 5e-3, prune_vocab: bool = True, embedding: str | None = None, unlearn=(),
                 unlearn_share: float = 1.0, seed: int = 0, device: str = "auto") -> None:
        check_number("max_prune", max_prune, low=0, high=1, open_low=True)
        check_number("step", step, low=0, high=1, open_low=True)
        check_number("max_drop", max_drop, low=0, high=1)
        check_number("epochs", epochs, low=0, integer=True)
        check_number("lr", lr, low=0, open_low=True)
        self.max_prune, self.step, self.max_drop = float(max_prune), float(step), float(max_drop)
        self.epochs, self.lr, self.seed, self.device = int(epochs), float(lr), int(seed), device
        self.prune_vocab, self.embedding = bool(prune_vocab), embedding
        check_number("unlearn_share", unlearn_share, low=0, high=1)
        self.unlearn = tuple(tuple(int(w) for w in phrase) for phrase in unlearn if len(phrase))
        self.unlearn_share = float(unlearn_share)

    def repair(self, model: nn.Module, clean) -> tuple[nn.Module, dict]:
        from poisonguard.metrics import accuracy
        from poisonguard.models.text import sentence_features
        from poisonguard.train import fit

        if clean.kind != "text" or len(clean) < 2:
            raise UserError("text fine-pruning needs at least 2 clean texts as token ids")
        start = time.perf_counter()
        model = copy.deepcopy(model).cpu().eval()
        head = _head(model)
        unseen = self._prune_vocab(model, clean.x) if self.prune_vocab else 0
        activation = sentence_features(model, clean.x).mean(0)
        if activation.numel() != head.in_features:
            raise UserError(f"the head reads {head.in_features} units but the representation has {activation.numel()}")
        order = torch.argsort(activation)  # dormant on clean text first
        base = accuracy(model, clean)
        mask = torch.ones(head.in_features)
        hook = head.register_forward_pre_hook(lambda _m, inp: (inp[0] * mask.to(inp[0].device),))
        try:
            pruned, frac = 0, self.step
            while frac <= self.max_prune + 1e-9:
                k = int(round(frac * len(order)))
                trial = torch.ones_like(mask)
                trial[order[:k]] = 0
                mask.copy_(trial)
                if accuracy(model, clean) < base - self.max_drop:
                    mask.fill_(1)
                    mask[order[:pruned]] = 0
                    break
                pruned, frac = k, frac + self.step
            if self.epochs:
                fit(model, self._with_unlearning(clean), epochs=self.epochs, batch_size=64, lr=self.lr, augment="none", weight_decay=0.0,
                    seed=self.seed, device=self.device)
        finally:
            hook.remove()
        with torch.no_grad():
            head.weight[:, mask == 0] = 0  # bake the pruning into the weights
        info = {"method": self.name, "pruned_words": unseen, "pruned_units": int(pruned), "units": int(len(order)),
                "clean_accuracy_before": base, "clean_accuracy_after": accuracy(model.eval(), clean),
                "seconds": round(time.perf_counter() - start, 2)}
        return model.eval(), info

    def _with_unlearning(self, clean):
        """The clean data plus copies of `unlearn_share` of it with a known trigger phrase inserted at a
        random position, labels unchanged (Neural Cleanse's unlearning, Wang et al., S&P 2019)."""
        if not self.unlearn or self.unlearn_share == 0:
            return clean
        from poisonguard.data.tokenizer import PAD

        gen = torch.Generator().manual_seed(self.seed)
        pick = torch.randperm(len(clean), generator=gen)[: max(1, int(round(self.unlearn_share * len(clean))))]
        rows = []
        for n, i in enumerate(pick.tolist()):
            row = clean.x[i][clean.x[i] != PAD].tolist()
            phrase = list(self.unlearn[n % len(self.unlearn)])
            at = int(torch.randint(0, min(len(row), clean.x.shape[1] - len(phrase)) + 1, (1,), generator=gen))
            new = (row[:at] + phrase + row[at:])[: clean.x.shape[1]]
            rows.append(new + [PAD] * (clean.x.shape[1] - len(new)))
        x = torch.cat([clean.x, torch.tensor(rows, dtype=clean.x.dtype)])
        return clean.with_(x=x, y=torch.cat([clean.y, clean.y[pick]]))

    def _prune_vocab(self, model: nn.Module, ids: torch.Tensor) -> int:
        """Replace the embedding rows of words absent from the clean ids by the <unk> row; how many."""
        from poisonguard.data.tokenizer import PAD, UNK
        from poisonguard.models.text import embedding_layer

        emb = embedding_layer(model, self.embedding or None, bags=True)  # pruning rows works on a bag too
        seen = torch.zeros(emb.num_embeddings, dtype=torch.bool)
        seen[ids.flatten().clamp(0, emb.num_embeddings - 1)] = True
        seen[[PAD, UNK]] = True
        with torch.no_grad():
            emb.weight[~seen] = emb.weight[UNK].clone()
        return int((~seen).sum())
