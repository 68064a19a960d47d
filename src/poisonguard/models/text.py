"""Small built-in text classifiers over token ids (N, L) int64, 0 = padding.

- `text_bag`: an embedding bag (mean of the word embeddings of the non-padding positions),
  one hidden layer, a linear head; trains on 2 CPU cores in seconds (Joulin et al., "Bag of
  Tricks for Efficient Text Classification", 2017, with a hidden layer).
- `text_cnn`: a 1-D CNN over the embeddings, filter widths 3, 4, 5, max-pooled over time
  (Kim, "Convolutional Neural Networks for Sentence Classification", EMNLP 2014).

Both name their embedding layer `embedding` (what `scan` hooks to optimise a relaxed trigger
in embedding space) and expose `features(ids)`, the sentence representation `sanitize` reads.
Any other `nn.Module` taking (N, L) ids works too, given the name of its `nn.Embedding`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from poisonguard.errors import UserError
from poisonguard.registry import Registry

TEXT_ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("text architecture")
EMBEDDING_LAYER = "embedding"
# The text family's default: what `train` builds, what sanitize trains, and the references that
# stand in for a user's own architecture (the text defences were set on it).
DEFAULT_TEXT_ARCH = "text_cnn"
# Adam's step size and weight decay per built-in architecture (10 epochs, batch 64 for both), used by
# `train` and by the clean references a text scan trains, so they learn as the suspect did.
# text_bag's was chosen on the tuning seeds 10-12 of benchmarks/text_checklist.py, on 300 texts
# held out of the attacker's half (never the benchmark's held-out texts): 0.46-0.48 accurate,
# against 0.30-0.33 for text_bag at 2e-3 and 0.34 for text_cnn (TF-IDF with logistic regression:
# 0.54); notes/issue-19-text.md, session 11.
TEXT_RECIPES = {"text_cnn": {"lr": 2e-3, "weight_decay": 0.0}, "text_bag": {"lr": 5e-2, "weight_decay": 1e-4}}


def text_recipe(arch: str) -> dict:
    """Adam's lr and weight decay for `arch` (a user's own architecture: text_cnn's)."""
    return dict(TEXT_RECIPES.get(arch, TEXT_RECIPES[DEFAULT_TEXT_ARCH]))


def _mask(ids: torch.Tensor) -> torch.Tensor:
    return (ids != 0).unsqueeze(-1).float()


@TEXT_ARCHITECTURES.register("text_bag")
class EmbeddingBagClassifier(nn.Module):
    """Mean word embedding -> ReLU hidden layer -> logits."""

    def __init__(self, *, vocab_size: int, num_classes: int, dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.hidden = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        e, m = self.embedding(ids), _mask(ids)
        pooled = (e * m).sum(1) / m.sum(1).clamp_min(1.0)
        return torch.relu(self.hidden(pooled))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))


@TEXT_ARCHITECTURES.register("text_cnn")
class TextCNN(nn.Module):
    """Embeddings -> Conv1d widths (3, 4, 5) x `filters` -> max over time -> logits."""

    def __init__(self, *, vocab_size: int, num_classes: int, dim: int = 64, filters: int = 48) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, k, padding=k // 2) for k in (3, 4, 5))
        self.head = nn.Linear(3 * filters, num_classes)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        e = (self.embedding(ids) * _mask(ids)).transpose(1, 2)
        return torch.cat([torch.relu(c(e)).amax(2) for c in self.convs], 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))


def build_text_model(arch: str, *, vocab_size: int, num_classes: int, seed: int | None = None, **kwargs) -> nn.Module:
    """A registered text architecture; with `seed` the initial weights depend on it alone."""
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    factory = TEXT_ARCHITECTURES.get(arch)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return factory(vocab_size=vocab_size, num_classes=num_classes, **kwargs)


def embedding_layer(model: nn.Module, name: str | None = None, *, bags: bool = False) -> nn.Module:
    """The model's word embedding called `name` (default: `embedding`, else the only one): an
    `nn.Embedding`, or with `bags` also an `nn.EmbeddingBag` (which pools its words, so the
    methods that work on each word's embedding cannot take it; pruning its rows can)."""
    kinds = (nn.Embedding, nn.EmbeddingBag) if bags else (nn.Embedding,)
    modules = dict(model.named_modules())
    if name:
        layer = modules.get(name)
        if not isinstance(layer, kinds):
            raise UserError(f"the model has no {'word embedding' if bags else 'nn.Embedding'} called {name!r} "
                            f"({_embeddings_said(modules)}){_pooled(layer)}")
        return layer
    if isinstance(modules.get(EMBEDDING_LAYER), kinds):
        return modules[EMBEDDING_LAYER]
    found = [m for m in modules.values() if isinstance(m, kinds)]
    if len(found) != 1:
        bag = next((n for n, m in modules.items() if isinstance(m, nn.EmbeddingBag)), None)
        if not found and bag is not None:
            raise UserError(_pooled(modules[bag], bag))
        raise UserError(f"the model has {len(found)} nn.Embedding layers ({_embeddings_said(modules)}); name the "
                        "word embedding with --embedding-layer")
    return found[0]


def _embeddings_said(modules: dict) -> str:
    found = [f"{n} ({type(m).__name__})" for n, m in modules.items() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    return "embeddings: " + (", ".join(found) or "none")


def _pooled(layer, name: str = "") -> str:
    if not isinstance(layer, nn.EmbeddingBag):
        return ""
    return (f"{'; ' if not name else ''}the model embeds words with nn.EmbeddingBag{f' ({name!r})' if name else ''}, "
            "which pools them: this command works on each word's embedding and needs an nn.Embedding")


def sentence_features(model: nn.Module, ids: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """(N, D) sentence representations: `model.features` when it has one, else the input of its last Linear."""
    from poisonguard.utils import batches, model_device

    device = model_device(model)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    grabbed: list[torch.Tensor] = []
    hook = None
    if not callable(getattr(model, "features", None)):
        if not last:
            raise UserError("the model has no features() and no nn.Linear head to read representations from")
        hook = last[-1].register_forward_hook(lambda m, inp, out: grabbed.append(inp[0].detach()))
    out = []
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for sl in batches(len(ids), batch_size):
                xb = ids[sl].to(device)
                if hook is None:
                    out.append(model.features(xb).flatten(1).cpu())
                else:
                    grabbed.clear()
                    model(xb)
                    out.append(grabbed[-1].flatten(1).cpu())
    finally:
        if hook is not None:
            hook.remove()
        model.train(was)
    return torch.cat(out) if out else torch.empty(0, 0)
