"""Architecture specs: what `--arch` names, and building a module from it.

- a built-in name (`mnist_cnn`, `preact_resnet18`, ...), built for the data's classes and shape;
- `torchvision:NAME`, built with `weights=None` (nothing is downloaded) and `num_classes`;
- `timm:NAME` (optional extra `timm`), built with `pretrained=False` and `num_classes`;
- the user's own code, `path/to/file.py:callable` or `package.module:callable`, called with
  exactly the `--arch-kwargs` given. This runs the user's code, so it is accepted only when the
  user typed it on the command line (`trusted=True`); a `metadata.json` may name the first
  three kinds only, never code, because a downloaded folder must not choose what runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from poisonguard.errors import UserError

log = logging.getLogger(__name__)

LIBRARIES = ("torchvision", "timm")


def spec_kind(spec: str) -> str:
    """`builtin`, `torchvision`, `timm` or `code` (the user's own callable)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"an architecture must be a non-empty string, got {spec!r}")
    if ":" not in spec:
        return "builtin"
    prefix = spec.split(":", 1)[0].strip().lower()
    return prefix if prefix in LIBRARIES else "code"


def is_code(spec: str) -> bool:
    return spec_kind(spec) == "code"


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """`num_classes=10,width=2` -> {"num_classes": 10, "width": 2} (ints, floats, true/false/none, else text)."""
    from poisonguard.utils import parse_options

    if not text:
        return {}
    items = [t for t in text.split(",") if t.strip()]
    return parse_options(items)


def _load_callable(spec: str):
    """The object `file.py:name` or `package.module:name` points to; one UserError when it does not import."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UserError(f"--arch {spec!r}: expected path/to/file.py:callable or package.module:callable")
    try:
        if target.endswith(".py") or "/" in target or "\\" in target:
            path = Path(target).expanduser()
            if not path.is_file():
                raise UserError(f"--arch {spec!r}: {path} is not a file")
            name = f"poisonguard_user_arch_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise UserError(f"--arch {spec!r}: cannot import {path}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # dataclasses and pickling look their module up here
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except UserError:
        raise
    except Exception as exc:  # the user's file may raise anything while importing
        raise UserError(f"--arch {spec!r} does not import: {type(exc).__name__}: {_first_line(exc)}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"--arch {spec!r}: {target} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"--arch {spec!r}: {attr} is not callable")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _call(factory, spec: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError:
            raise UserError(f"--arch {spec!r} does not take the arguments {sorted(kwargs)}: {_first_line(exc)} "
                            "(set them with --arch-kwargs k=v,...)") from exc
        raise UserError(f"--arch {spec!r} failed: TypeError: {_first_line(exc)}") from exc
    except UserError:
        raise
    except Exception as exc:  # the user's code may raise anything
        raise UserError(f"--arch {spec!r} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"--arch {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


# Keywords through which a library's builder downloads weights or reads a file (timm's
# checkpoint_path, torchvision's weights_backbone, pretrained_cfg ...): the skeleton is built
# empty, and the weights are only ever the checked file's.
# Whole keyword names only: timm's drop_path_rate is an ordinary hyperparameter.
_FETCHING_KEYWORD = re.compile(r"(weights|pretrained|checkpoint|download)\w*|\w*(_url|_file|_dir)|url|file|cache\w*",
                               re.IGNORECASE)


def _check_no_fetch(kwargs: dict[str, Any], spec: str) -> None:
    for key, value in kwargs.items():
        if _FETCHING_KEYWORD.fullmatch(key) and value not in (None, False):
            raise UserError(f"{spec}: the keyword {key}={str(value)[:60]!r} would download or read weights; poisonguard "
                            "builds the architecture empty and loads only the (checked) model file")


def absolute_spec(spec: str | None) -> str | None:
    """`file.py:callable` with the file's absolute path (so a report's or a saved model's
    "pass --arch ..." works from any folder, and Ray workers find the file); other specs as typed."""
    import os

    if spec is None or spec_kind(spec) != "code":
        return spec
    file, _, name = spec.rpartition(":")
    path = Path(file).expanduser()
    return f"{os.path.abspath(path) if path.exists() else file}:{name}"


def build_from_spec(spec: str, *, num_classes: int, input_shape: Sequence[int], kwargs: dict[str, Any] | None = None,
                    trusted: bool = False, seed: int | None = None) -> nn.Module:
    """Instantiate the architecture `spec` names (see the module docstring).

    `trusted` says the spec was typed by the user; without it a code spec is refused.
    """
    import torch

    from poisonguard.models.registry import build_model

    kwargs = dict(kwargs or {})
    kind = spec_kind(spec)
    if kind == "builtin":
        if kwargs:
            raise UserError(f"built-in architecture {spec!r} takes no --arch-kwargs (got {', '.join(kwargs)})")
        return build_model(spec, num_classes=num_classes, input_shape=input_shape, seed=seed)
    if kind == "code" and not trusted:
        raise UserError(f"the architecture {spec!r} is the user's own code, which poisonguard runs only when typed "
                        f"on the command line: pass --arch {spec}")
    name = spec.split(":", 1)[1].strip()
    if kind in LIBRARIES:
        kwargs.setdefault("num_classes", num_classes)
        _check_no_fetch(kwargs, spec)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if kind == "torchvision":
            import torchvision

            if name not in torchvision.models.list_models():
                raise UserError(f"torchvision has no model {name!r}")
            if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(name)).parameters:
                kwargs["weights_backbone"] = None  # its default downloads ImageNet weights for the backbone
            return _call(lambda **kw: torchvision.models.get_model(name, weights=None, **kw), spec, kwargs)
        if kind == "timm":
            try:
                import timm
            except ImportError as exc:
                raise UserError(f"--arch {spec!r} needs timm, which is not installed: pip install 'poisonguard[timm]'") from exc
            return _call(lambda **kw: timm.create_model(name, pretrained=False, **kw), spec, kwargs)
        return _call(_load_callable(spec), spec, kwargs)
