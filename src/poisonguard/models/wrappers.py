"""Inputs as a foreign model expects them: `--normalize MEAN,STD` and `--input-size H,W`.

poisonguard feeds every model images in [0, 1] at the data's size (DESIGN.md). Models trained
elsewhere often expect normalised inputs (torchvision and timm: ImageNet mean/std) at another
size (224 pixels); `InputAdapter` puts that inside the model, so the contract holds and
triggers are still drawn on the [0, 1] image. The adapter is recorded in `metadata.json` and
taken off again when a repaired model is written back in the input's format.

Some exported classifiers end in a softmax. Every method here takes the model's outputs as
logits (cross-entropy, margins); probabilities squeezed through a second softmax give almost
no gradient, so trigger inversion and fine-tuning stall. Their logarithm is a logit vector
(log softmax(z) = z - logsumexp(z)), so the adapter takes it when the outputs are
probabilities; the user's model itself is written back unchanged.

Two-class models often answer one number per input: a logit z (trained with
BCEWithLogitsLoss) or a probability p (a final sigmoid). The adapter reads it as the two logits
(0, z), whose softmax is (1 - sigmoid(z), sigmoid(z)), or (log(1 - p), log p), so every method
sees one score per class; `--binary-output` says which where the probe's guess is wrong.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.errors import UserError

MAX_SIDE = 4096


# Smallest probability whose logarithm is taken: a class the softmax underflowed to 0 gets
# log(1e-30) ~ -69, far below any class a method could push up, instead of -inf.
PROBABILITY_FLOOR = 1e-30


MAX_RESIZED_ELEMENTS = 1 << 26  # resized inputs held at once (256 MB of float32); larger batches go in chunks


ONE_OUTPUT_READINGS = ("logit", "probability")


def two_columns(out: torch.Tensor, reading: str) -> torch.Tensor:
    """(N,) or (N, 1) answers of a two-class model as (N, 2) logits: (0, z) for a logit z,
    (log(1 - p), log p) for a probability p."""
    z = out.reshape(len(out), 1)
    if reading == "logit":
        return torch.cat([torch.zeros_like(z), z], 1)
    return torch.cat([torch.log((1 - z).clamp_min(PROBABILITY_FLOOR)), torch.log(z.clamp_min(PROBABILITY_FLOOR))], 1)


class InputAdapter(nn.Module):
    """Resize (bilinear) and/or normalise (N, C, H, W) inputs in [0, 1], then call `inner`;
    with `log_outputs`, return the log of `inner`'s probabilities, i.e. logits; with `one_output`
    ("logit" or "probability"), a two-class model's one answer per input as two logits."""

    def __init__(self, inner: nn.Module, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 size: Sequence[int] | None = None, log_outputs: bool = False, one_output: str | None = None) -> None:
        super().__init__()
        if one_output not in (None, *ONE_OUTPUT_READINGS):
            raise ValueError(f"one_output must be one of {ONE_OUTPUT_READINGS}, got {one_output!r}")
        self.inner = inner
        self.log_outputs = bool(log_outputs)
        self.one_output = one_output
        self.size = tuple(int(s) for s in size) if size is not None else None
        self.normalize = mean is not None
        if mean is not None:
            self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            # a metadata.json may ask for 4096 x 4096 inputs: a batch of 512 resized at once is 34 GB
            step = max(1, MAX_RESIZED_ELEMENTS // (int(x.shape[1]) * self.size[0] * self.size[1]))
            if len(x) > step:
                return torch.cat([self(x[i:i + step]) for i in range(0, len(x), step)])
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if self.normalize:
            x = (x - self.mean) / self.std
        out = self.inner(x)
        if self.one_output is not None:
            return two_columns(out, self.one_output)
        return torch.log(out.clamp_min(PROBABILITY_FLOOR)) if self.log_outputs else out

    def describe(self) -> dict:
        out: dict = {"outputs": "probabilities"} if self.log_outputs else {}
        if self.one_output is not None:
            out["outputs"] = f"one {self.one_output}"
        if self.normalize:
            out["normalize"] = {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}
        if self.size is not None:
            out["input_size"] = list(self.size)
        return out


@torch.no_grad()
def outputs_probabilities(model: nn.Module, input_shape: Sequence[int]) -> bool:
    """Whether `model` ends in a softmax: on a probe batch every output row lies in [0, 1] and
    sums to 1. Logits never do by chance; a probe the model rejects answers False (the
    caller's own checks say why in one line)."""
    probe = torch.rand(4, *[int(s) for s in input_shape], generator=torch.Generator().manual_seed(0))
    try:
        out = model(probe)
    except Exception:  # noqa: BLE001  (any failure here is reported by the shape checks that follow)
        return False
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < 2 or not out.is_floating_point():
        return False
    out = out.double()
    return bool(torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
                and torch.allclose(out.sum(dim=1), torch.ones(out.shape[0], dtype=out.dtype), atol=1e-4))


@torch.no_grad()
def one_output_reading(model: nn.Module, input_shape: Sequence[int], choice: str | None = None) -> str | None:
    """How to read a two-class model that answers one number per input (None: it does not).

    `choice` (--binary-output, or a saved model's metadata) decides; else a probe guesses:
    "probability" when every answer lies in [0, 1] (a final sigmoid), "logit" otherwise. The
    probe is random features in [0, 1], else token ids 0 (a text model takes no floats)."""
    shape = [int(s) for s in input_shape]
    for probe in (torch.rand(8, *shape, generator=torch.Generator().manual_seed(0)), torch.zeros(8, *shape, dtype=torch.long)):
        try:
            out = model(probe)
        except Exception:  # noqa: BLE001  (the shape checks that follow say why in one line)
            continue
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.numel() != len(probe) \
                or out.ndim not in (1, 2) or len(out) != len(probe):
            return None
        if choice is not None:
            return choice
        return "probability" if bool(((out >= 0) & (out <= 1)).all()) else "logit"
    return None


def parse_normalize(text: str | None, channels: int | None = None) -> tuple[list[float], list[float]] | None:
    """`"0.485,0.456,0.406/0.229,0.224,0.225"`, `"imagenet"`, or `"0.5,0.25"` (one mean and std for all channels)."""
    if text is None:
        return None
    if text.strip().lower() == "imagenet":
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    try:
        if "/" in text:
            mean_s, std_s = text.split("/", 1)
            mean, std = [float(v) for v in mean_s.split(",")], [float(v) for v in std_s.split(",")]
        else:
            values = [float(v) for v in text.split(",")]
            if len(values) != 2:
                raise ValueError
            mean, std = [values[0]], [values[1]]
    except ValueError as exc:
        raise UserError(f"--normalize {text!r}: expected MEAN,STD, M1,M2,M3/S1,S2,S3 or imagenet") from exc
    return check_normalize(mean, std, channels)


def check_normalize(mean, std, channels: int | None = None) -> tuple[list[float], list[float]]:
    if not isinstance(mean, list) or not isinstance(std, list) or not mean or len(mean) != len(std) \
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mean + std):
        raise UserError("normalize needs as many means as standard deviations (numbers)")
    if not all(torch.isfinite(torch.tensor(float(v))) for v in mean) or not all(0 < float(s) < float("inf") for s in std):
        raise UserError("normalize: means must be finite and standard deviations positive")
    if channels is not None and len(mean) not in (1, channels):
        raise UserError(f"normalize gives {len(mean)} means but the images have {channels} channels")
    if channels is not None and len(mean) == 1:
        mean, std = mean * channels, std * channels
    return [float(v) for v in mean], [float(v) for v in std]


def parse_size(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError as exc:
        raise UserError(f"--input-size {text!r}: expected H,W (e.g. 224,224)") from exc
    if len(values) == 1:
        values = values * 2
    return check_size(values)


def check_size(values) -> list[int]:
    if not isinstance(values, list) or len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                   and 1 <= v <= MAX_SIDE for v in values):
        raise UserError(f"input size must be two integers in [1, {MAX_SIDE}]")
    return values
