"""A text model on disk: weights as safetensors, its tokenizer and metadata as JSON (no pickle anywhere).

    out/model.safetensors   the state dict
    out/model.json          {"format": "poisonguard-text-model", "arch": "text_bag", "arch_kwargs": {...},
                             "classes": [...], "embedding_layer": "embedding", "sha256": "..."}
    out/tokenizer.json      the tokenizer (data/tokenizer.py)

A built-in architecture is rebuilt from `model.json`; a user's own module needs `--arch
path/to/file.py:callable` typed on the command line (model.json never names code to run),
`--tokenizer` when its tokenizer lies elsewhere, and `--embedding-layer` when its embedding is
not called `embedding`. Weights go through the file-safety scanner like every model file.
A user's weights may also be a PyTorch state dict (`pytorch_model.bin`, `model.pt`), read with
`weights_only=True`: the format is read from the bytes. TorchScript and ONNX text models are
refused in one line (the inversion needs the embedding layer as a module).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poisonguard.data.tokenizer import Tokenizer, load_tokenizer
from poisonguard.errors import UserError
from poisonguard.jsonfile import read_tagged_json
from poisonguard.models.text import TEXT_ARCHITECTURES, build_text_model, embedding_layer

# what a text model's weights may be (by their bytes), and the names looked for in its folder
TEXT_WEIGHT_FORMATS = ("safetensors", "torch-zip", "pickle", "legacy-torch")
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")

FORMAT = "poisonguard-text-model"


@dataclass
class TextModel:
    """A text classifier with the tokenizer its ids come from and the name of its embedding layer."""

    model: nn.Module
    tokenizer: Tokenizer
    classes: tuple[str, ...]
    arch: str
    embedding: str = "embedding"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    sha256: str | None = None

    @property
    def embedding_module(self) -> nn.Embedding:
        """The word embedding, for the commands that work on it (scan); "" when loading could not
        tell which it is, so the command that needs it says why in one line."""
        return embedding_layer(self.model, self.embedding or None)


def save_text_model(tm: TextModel, folder: str | Path, *, extra: dict | None = None) -> dict:
    from safetensors.torch import save_file

    from poisonguard.utils import atomic_path, atomic_write_text, sha256_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in tm.model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    tm.tokenizer.save(folder / "tokenizer.json")
    meta = {"format": FORMAT, "version": 1, "arch": tm.arch, "arch_kwargs": tm.arch_kwargs, "classes": list(tm.classes),
            "embedding_layer": tm.embedding, "vocab_size": len(tm.tokenizer), "max_len": tm.tokenizer.max_len,
            "sha256": sha256_file(folder / "model.safetensors"), **(extra or {})}
    atomic_write_text(folder / "model.json", json.dumps(meta, indent=1))
    return meta


# model.json's fields and the JSON types each may hold (checked before any is used)
META_TYPES = {"classes": (list, "list"), "arch": (str, "string"), "arch_kwargs": (dict, "object"),
              "embedding_layer": (str, "string"), "sha256": (str, "string")}


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        return {}
    meta = read_tagged_json(path, fmt=FORMAT, what="text model's metadata")
    for key, (kind, word) in META_TYPES.items():
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise UserError(f"{path}: {key!r} must be a JSON {word}, got {type(meta[key]).__name__}")
    if any(not isinstance(c, (str, int)) or isinstance(c, bool) for c in meta.get("classes") or ()):
        raise UserError(f"{path}: 'classes' must list class names (strings or integers)")
    return meta


def load_text_model(path: str | Path, *, arch: str | None = None, arch_kwargs: dict | None = None,
                    tokenizer: str | Path | None = None, embedding: str | None = None,
                    num_classes: int | None = None, classes: tuple[str, ...] | None = None) -> TextModel:
    """Load a text model folder (or its model.safetensors) safely; see the module docstring.

    `classes` (the data's) name the outputs of a model whose folder records none (a user's
    own model: output i is the data's class i); `num_classes` alone names them 0..K-1.
    """
    from poisonguard.filesafety import require_safe
    from poisonguard.utils import sha256_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), folder / WEIGHT_NAMES[0]) \
        if path.is_dir() else path
    if not weights.is_file():
        raise UserError(f"text model weights not found: {weights}")
    fmt = require_safe(weights).format  # the format from the bytes, never the name
    if fmt not in TEXT_WEIGHT_FORMATS:
        raise UserError(f"{weights} is {fmt}: a text model is read as weights (safetensors, or a PyTorch state dict "
                        "such as pytorch_model.bin) with its architecture (model.json or --arch file.py:callable); "
                        "save its state_dict()")
    meta = _read_meta(folder / "model.json")
    digest = sha256_file(weights)
    if meta.get("sha256") and meta["sha256"] != digest:
        raise UserError(f"{weights}: its SHA-256 does not match model.json (the file changed after it was saved)")
    tok = load_tokenizer(tokenizer if tokenizer else folder / "tokenizer.json")
    for key, value in (("max_len", tok.max_len), ("vocab_size", len(tok))):
        if key in meta and meta[key] != value:  # the tokenizer is not the one the model was saved with
            raise UserError(f"{folder}/model.json records {key} {meta[key]!r}, the tokenizer has {value}; "
                            "give the model's own tokenizer")
    recorded = tuple(str(c) for c in meta.get("classes") or ())
    if recorded:
        classes = recorded
    elif classes is not None:
        classes = tuple(classes)
    elif num_classes is not None:
        classes = tuple(str(i) for i in range(num_classes))
    else:
        raise UserError(f"{folder}: no model.json gives the classes; pass the data the model was trained for")
    if arch is not None and ":" in arch:
        from poisonguard.models.arch import _call, _load_callable

        model = _call(_load_callable(arch), arch, dict(arch_kwargs or {}))
        arch_name, kwargs = arch, dict(arch_kwargs or {})
    else:
        arch_name = arch or meta.get("arch")
        if not arch_name:
            raise UserError(f"{folder}: no model.json names the architecture; pass --arch path/to/file.py:callable "
                            f"(and --arch-kwargs) for your own model, or a built-in: {', '.join(TEXT_ARCHITECTURES.names())}")
        if arch_name not in TEXT_ARCHITECTURES:
            raise UserError(f"{folder}: unknown text architecture {arch_name!r}; known: "
                            f"{', '.join(TEXT_ARCHITECTURES.names())}, or --arch path/to/file.py:callable")
        kwargs = dict(meta.get("arch_kwargs") or {}) if arch is None else dict(arch_kwargs or {})
        _check_kwargs(kwargs, folder)
        model = build_text_model(arch_name, vocab_size=len(tok), num_classes=len(classes), **kwargs)
    from poisonguard.models.formats.weights import read_state

    # the same reader as every model's weights (torch.load with weights_only for a state dict)
    state, _ = read_state(weights, "safetensors" if fmt == "safetensors" else "torch")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{weights}: the weights do not fit the architecture {arch_name!r}: "
                        f"{str(exc).splitlines()[0][:300]}") from exc
    layer = embedding if embedding is not None else meta.get("embedding_layer")
    tm = TextModel(model.eval(), tok, classes, arch_name, "", kwargs, str(weights), digest)
    try:
        emb = embedding_layer(model, layer if isinstance(layer, str) else None, bags=True)
    except UserError:
        if embedding:  # named by the user: a mistake now, not later
            raise
        emb = None  # two embeddings (words, positions) or none: only the commands that need it ask (scan)
    if emb is not None:
        tm.embedding = next(n for n, m in model.named_modules() if m is emb)
        if emb.num_embeddings != len(tok):
            raise UserError(f"the tokenizer has {len(tok)} words but the model's embedding {emb.num_embeddings}")
    else:
        _check_vocabulary_fits(model, tok)
    if num_classes is not None and len(classes) != num_classes:
        raise UserError(f"the model has {len(classes)} classes but the data has {num_classes}")
    return tm


def _check_vocabulary_fits(model: nn.Module, tok: Tokenizer) -> None:
    """Without a known word embedding, one forward pass of the tokenizer's largest id says whether
    the model can take its ids (else every command would stop on an index error)."""
    import torch

    probe = torch.full((2, tok.max_len), len(tok) - 1, dtype=torch.long)
    try:
        with torch.no_grad():
            model(probe)
    except (IndexError, RuntimeError) as exc:
        raise UserError(f"the model cannot take the tokenizer's ids (it has {len(tok)} words): "
                        f"{str(exc).splitlines()[0][:200]}") from exc


def _check_kwargs(kwargs: dict, folder: Path) -> None:
    for k, v in kwargs.items():
        if k not in ("dim", "hidden", "filters") or not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096:
            raise UserError(f"{folder}/model.json: arch_kwargs {k}={v!r} is not a size in [1, 4096] of a built-in text model")


def new_text_model(arch: str, tokenizer: Tokenizer, classes: tuple[str, ...], *, seed: int, **kwargs) -> TextModel:
    model = build_text_model(arch, vocab_size=len(tokenizer), num_classes=len(classes), seed=seed, **kwargs)
    return TextModel(model, tokenizer, tuple(classes), arch, "embedding", kwargs)


def check_text_classifier(tm: TextModel) -> None:
    """UserError unless the model maps (2, L) ids to finite (2, classes) logits."""
    probe = torch.ones((2, tm.tokenizer.max_len), dtype=torch.long)
    try:
        with torch.no_grad():
            out = tm.model.eval()(probe)
    except Exception as exc:  # the user's module may fail in many ways
        raise UserError(f"the model does not accept token ids of shape {tuple(probe.shape)}: "
                        f"{str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}") from exc
    if not isinstance(out, torch.Tensor) or out.shape != (2, len(tm.classes)) or not torch.isfinite(out).all():
        one = (" (it answers one number per input: return one score per class, e.g. "
               "torch.cat([torch.zeros_like(z), z], 1) for a logit z)"
               if isinstance(out, torch.Tensor) and out.numel() == 2 and len(tm.classes) == 2 else "")
        raise UserError(f"the model is not a finite classifier of {len(tm.classes)} classes for token ids{one}")
