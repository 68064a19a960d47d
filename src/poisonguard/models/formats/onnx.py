"""ONNX graphs (`.onnx`), through `onnx2torch` (optional extra: pip install 'poisonguard[onnx]').

onnx2torch turns the graph into a `torch.fx.GraphModule` of ordinary `nn.Conv2d` /
`nn.Linear` / ... modules, differentiable and hookable like any eager model. onnx 1.23.2 is
the release that resolves beside Flower 1.42's `protobuf<7`. Written back with the
TorchScript-based exporter (`torch.onnx.export(dynamo=False)`) at opset 16, which onnx2torch
reads back (its LayerNormalization of opset 17 is broken, its Shape/ReduceMean stop at 15/13).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poisonguard.errors import UserError
from poisonguard.filesafety.onnx import graph_tensors
from poisonguard.models.formats import LoadRequest, ModelFormat, first_line, register_format
from poisonguard.models.graph import FixedBatch, quiet_torch
from poisonguard.utils import atomic_path

log = logging.getLogger(__name__)

# onnx2torch's Slice indexes with a list on every forward pass, which torch warns about each time.
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing", category=UserWarning)

OPSET = 16
INSTALL = "pip install 'poisonguard[onnx]'"


def _modules():
    try:
        import onnx
        import onnx2torch
    except ImportError as exc:
        raise UserError(f"reading ONNX models needs onnx and onnx2torch, which are not installed: {INSTALL}") from exc
    return onnx, onnx2torch


def _input_batch(proto) -> int | None:
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1:
        raise UserError(f"the ONNX graph has {len(inputs)} inputs; poisonguard checks classifiers of one input")
    dims = inputs[0].type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 1 else None


def load(request: LoadRequest) -> tuple[nn.Module, dict[str, Any]]:
    onnx, onnx2torch = _modules()
    try:
        proto = onnx.load(str(request.path), load_external_data=False)  # external data could name any file
    except Exception as exc:  # protobuf's DecodeError and friends
        raise UserError(f"cannot read ONNX model {request.path}: {first_line(exc)}") from exc
    # Every tensor, not just the initializers: the converter reads a Constant node's external
    # data relative to the working directory, where the file check could not see it.
    if any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data for t in graph_tensors(proto)):
        raise UserError(f"{request.path} keeps tensors in external files, which poisonguard does not read; "
                        "save the ONNX model with its weights inside")
    batch = _input_batch(proto)
    _fold_identity_initializers(onnx, proto)
    try:
        with quiet_torch():
            module = onnx2torch.convert(proto)
    except NotImplementedError as exc:
        match = re.search(r"operation_type='([^']+)', version=(\d+)", str(exc))
        what = f"operator {match.group(1)} (opset {match.group(2)})" if match else first_line(exc)
        raise UserError(f"cannot convert ONNX model {request.path}: onnx2torch has no converter for {what}; "
                        f"re-export it at opset {OPSET} or as TorchScript / torch.export") from exc
    except Exception as exc:  # a malformed graph fails in many ways inside the converter
        raise UserError(f"cannot convert ONNX model {request.path}: {first_line(exc)}") from exc
    module.eval()
    _trainable_initializers(module)
    if batch is not None:
        return FixedBatch(module, batch), {"eager": True, "static_batch": batch, "opset": _opset(proto)}
    return module, {"eager": True, "opset": _opset(proto)}


def _trainable_initializers(module: nn.Module) -> None:
    """Stored weights that feed plain operators (MatMul, Add, Mul: how tf2onnx and many
    exporters write dense layers) become buffers of onnx2torch's `initializers` module, which no
    optimiser sees, so repair could not change them. Floating-point ones are parameters again,
    under the same names (integer shapes and indices stay buffers)."""
    holder = getattr(module, "initializers", None)
    if not isinstance(holder, nn.Module):
        return
    for name, tensor in list(holder._buffers.items()):
        if tensor is not None and tensor.is_floating_point():
            del holder._buffers[name]
            holder.register_parameter(name, nn.Parameter(tensor.detach().clone()))


def _fold_identity_initializers(onnx, proto) -> None:
    """Replace each Identity node of a stored weight by a copy of that weight under its output name.

    torch's exporter hands equal constants to several layers through Identity nodes (an
    untrained ResNet's folded batch-norm biases are all zeros, so every Conv shares one), and
    onnx2torch reads a Conv's weights only from stored tensors: it failed with a bare KeyError.
    """
    stored = {t.name: t for t in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    kept = []
    for node in proto.graph.node:  # in topological order, so chains of Identity fold in one pass
        if node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in stored \
                and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(stored[node.input[0]])
            copy.name = node.output[0]
            proto.graph.initializer.append(copy)
            stored[copy.name] = copy
        else:
            kept.append(node)
    if len(kept) < len(proto.graph.node):
        del proto.graph.node[:]
        proto.graph.node.extend(kept)


def _opset(proto) -> int | None:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def save(module: nn.Module, path: Path, example: torch.Tensor) -> None:
    _modules()
    dynamic = None
    if isinstance(module, FixedBatch):
        module, example = module.inner, example[:1].expand(module.batch, *example.shape[1:]).clone()
    else:
        dynamic = {"input": {0: "batch"}, "logits": {0: "batch"}}
    with atomic_path(path) as tmp, torch.no_grad(), quiet_torch():
        torch.onnx.export(module.eval(), (example,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"], dynamic_axes=dynamic)


FORMAT = register_format(ModelFormat("onnx", "onnx", ("onnx",), load, save))
