"""Graph formats as eager modules: what `torch.export`, TorchScript and ONNX models become in memory.

Every command works on an eager `nn.Module`: fine-pruning hooks a convolution's output, the
inversion engine probes activation sizes with hooks, repair deep-copies and trains, and the
evaluation toggles `eval()`. A graph format gives none of that directly (an exported program's
module refuses `eval()`; a ScriptModule refuses hooks; ONNX is not PyTorch at all), so each is
turned into a `torch.fx.GraphModule` whose convolutions, linear layers, batch norms and
dropouts are real `nn.Conv2d` / `nn.Linear` / `nn.BatchNorm1d|2d|3d` / `nn.Dropout` submodules
holding the file's own parameters under their original names:

- `.pt2`: `ExportedProgram.module()`, then `lift_layers`;
- TorchScript: torch's TorchScript-to-export converter, then the same;
- ONNX: `onnx2torch`, which already builds such modules (an optional extra).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import fx, nn

log = logging.getLogger(__name__)

aten = torch.ops.aten


def is_export_module(model: nn.Module) -> bool:
    """`ExportedProgram.module()` output, whose `train()`/`eval()` raise NotImplementedError."""
    return any(cls.__name__ == "_StatefulGraphModule" for cls in type(model).__mro__)


def _param_arg(node: Any) -> str | None:
    """The attribute path of a get_attr argument used by this one node only, else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or len(node.users) != 1:
        return None
    return node.target


def _split(target: str) -> tuple[str, str]:
    return tuple(target.rsplit(".", 1)) if "." in target else ("", target)


def _get(gm: nn.Module, target: str) -> Any:
    owner, leaf = _split(target)
    return getattr(gm.get_submodule(owner) if owner else gm, leaf, None)


def _pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (list, tuple)) and all(isinstance(i, int) for i in v) and len(v) in (1, 2):
        return (v[0], v[-1])
    return None


def _conv(gm, node) -> tuple[nn.Module, dict[str, str]] | None:
    if node.target is aten.conv2d.default:
        defaults = [None, None, None, [1, 1], [0, 0], [1, 1], 1]
        args = list(node.args) + defaults[len(node.args):]
        for i, key in enumerate(("input", "weight", "bias", "stride", "padding", "dilation", "groups")):
            if key in node.kwargs:
                args[i] = node.kwargs[key]
        _x, w, b, stride, padding, dilation, groups = args
    elif node.target is aten.convolution.default and len(node.args) == 9:
        _x, w, b, stride, padding, dilation, transposed, _out_pad, groups = node.args
        if transposed:
            return None
    else:
        return None
    names = {"weight": _param_arg(w), **({"bias": _param_arg(b)} if b is not None else {})}
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    weight = _get(gm, names["weight"]) if names["weight"] else None
    if None in names.values() or not isinstance(weight, nn.Parameter) or weight.ndim != 4 or None in (stride, padding, dilation):
        return None
    out_c, in_per_group, kh, kw = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_c, (kh, kw), stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=b is not None)
    return conv, names


def _linear(gm, node) -> tuple[nn.Module, dict[str, str]] | None:
    if node.target is not aten.linear.default:
        return None
    w, b = node.args[1], node.args[2] if len(node.args) > 2 else None
    names = {"weight": _param_arg(w), **({"bias": _param_arg(b)} if b is not None else {})}
    weight = _get(gm, names["weight"]) if names["weight"] else None
    if None in names.values() or not isinstance(weight, nn.Parameter) or weight.ndim != 2:
        return None
    out_f, in_f = weight.shape
    return nn.Linear(in_f, out_f, bias=b is not None), names


def _batch_norm(gm, node) -> tuple[nn.Module, dict[str, str]] | None:
    if node.target is not aten.batch_norm.default or len(node.args) < 8:
        return None
    _x, w, b, mean, var, _training, momentum, eps = node.args[:8]
    names = {"weight": _param_arg(w), "bias": _param_arg(b), "running_mean": _param_arg(mean),
             "running_var": _param_arg(var)}
    if None in names.values() or not isinstance(_get(gm, names["weight"]), nn.Parameter):
        return None
    # the layer of the input's rank: a table model's BatchNorm1d sees (N, F), which BatchNorm2d refuses
    value = _x.meta.get("val") if isinstance(_x, fx.Node) else None
    rank = value.dim() if isinstance(value, torch.Tensor) else 4
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 5: nn.BatchNorm3d}.get(rank, nn.BatchNorm2d)
    bn = kind(_get(gm, names["weight"]).shape[0], eps=float(eps), momentum=float(momentum))
    return bn, names


LIFTERS: tuple[Callable, ...] = (_conv, _linear, _batch_norm)


def _install(gm: fx.GraphModule, module: nn.Module, names: dict[str, str], used: set[str]) -> str:
    """Give `module` the graph's tensors and put it where they live, so state-dict names stay the same.

    When the tensors' plain container module holds nothing else, the layer replaces it
    (`features.3.weight` stays `features.3.weight`); otherwise it gets a fresh name.
    """
    owners = {_split(t)[0] for t in names.values()}
    owner = owners.pop() if len(owners) == 1 else None
    container = gm.get_submodule(owner) if owner else None
    own = set()
    if container is not None:
        own = {k for k, _ in container.named_parameters(recurse=False)} | {k for k, _ in container.named_buffers(recurse=False)}
    leaves = {_split(t)[1] for t in names.values()}
    replace = bool(owner) and owner not in used and container is not None and not list(container.children()) \
        and own <= leaves | {"num_batches_tracked"} and {_split(t)[1] for t in names.values()} == set(names)
    for attr, target in names.items():
        tensor = _get(gm, target)
        if isinstance(tensor, nn.Parameter):
            setattr(module, attr, tensor)
        else:
            module.register_buffer(attr, tensor)
    if replace:
        name = owner
        tracked = getattr(container, "num_batches_tracked", None)
        if tracked is not None and hasattr(module, "num_batches_tracked"):
            module.num_batches_tracked = tracked
    else:
        base = (owner or "layer").replace(".", "_") + "_" + type(module).__name__.lower()
        name, i = base, 0
        while hasattr(gm, name):
            i += 1
            name = f"{base}_{i}"
    gm.add_submodule(name, module)
    used.add(name)
    return name


def lift_layers(gm: fx.GraphModule) -> fx.GraphModule:
    """A fresh GraphModule with `gm`'s graph, its layer calls turned into real submodules.

    The result has the same parameters under the same state-dict names, supports `eval()`,
    `train()`, hooks and deep copies, and computes the same function. Export's input guard
    (`_guards_fn`) is dropped: the first call checks what the graph accepts instead.
    """
    out = fx.GraphModule(gm, gm.graph)  # copies what the graph references into a plain GraphModule
    for attr in ("_in_spec", "_out_spec"):
        if hasattr(gm, attr):
            setattr(out, attr, getattr(gm, attr))
    graph = out.graph
    used: set[str] = set()
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
            continue
        if node.op != "call_function":
            continue
        if node.target is aten.dropout.default and len(node.args) >= 2:
            name = f"dropout_{len(used)}"
            out.add_submodule(name, nn.Dropout(float(node.args[1])))
            used.add(name)
            with graph.inserting_before(node):
                new = graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            continue
        for lifter in LIFTERS:
            found = lifter(out, node)
            if found is None:
                continue
            module, names = found
            module.train(False)
            name = _install(out, module, names, used)
            with graph.inserting_before(node):
                new = graph.call_module(name, (node.args[0],))
            new.meta = dict(node.meta)
            getters = [a for a in node.args[1:] if isinstance(a, fx.Node)]
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            for g in getters:
                if not g.users:
                    graph.erase_node(g)
            break
    if hasattr(out, "_guards_fn"):
        delattr(out, "_guards_fn")
    out.delete_all_unused_submodules()
    graph.lint()
    out.recompile()
    return out.eval()


def from_exported(program: Any) -> fx.GraphModule:
    """An eager module from an `ExportedProgram` (or its `.module()`)."""
    gm = program.module() if hasattr(program, "module") and not isinstance(program, nn.Module) else program
    return lift_layers(gm)


def uses_batch_statistics(script: Any) -> bool:
    """Whether a TorchScript graph calls batch norm with training fixed to True (a model traced in
    train mode: the trace bakes the flag in as a constant)."""
    try:
        graph = script.inlined_graph
    except (AttributeError, RuntimeError):
        return False
    for node in graph.findAllNodes("aten::batch_norm"):
        flag = list(node.inputs())[5]  # batch_norm(input, weight, bias, mean, var, training, ...)
        if flag.node().kind() == "prim::Constant" and flag.toIValue() is True:
            return True
    return False


def from_torchscript(module: torch.jit.ScriptModule, example: torch.Tensor) -> fx.GraphModule:
    """An eager module computing what `module` computes on inputs like `example` (batch >= 2).

    Uses torch's TorchScript-to-export converter; a batch of two keeps the batch size symbolic.
    """
    from torch._export.converter import TS2EPConverter

    if uses_batch_statistics(module):
        log.warning("the TorchScript model normalises with each batch's own statistics (batch norm traced in "
                    "training mode), so its answers depend on the batch; poisonguard reads it with the running "
                    "statistics. Trace it after model.eval() to check the model as it is used.")
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).clone()
    with torch.no_grad(), _quiet_torch():
        program = TS2EPConverter(module, (example,)).convert()
    gm = program.module()
    # The converter turns a loaded module's parameters into buffers; they are parameters again
    # (trainable, seen by optimisers) under the same names.
    for name, _ in module.named_parameters():
        owner, leaf = _split(name)
        holder = gm.get_submodule(owner) if owner else gm
        tensor = holder._buffers.get(leaf)
        if tensor is not None:
            del holder._buffers[leaf]
            holder.register_parameter(leaf, nn.Parameter(tensor.detach(), requires_grad=True))
    return lift_layers(gm)


class _quiet_torch:
    """Silence torch's warnings and log records for the block (export logs a 19-line traceback
    at WARNING for a malformed archive, even with --quiet); the error itself still propagates."""

    def __enter__(self):
        import warnings

        self._disabled = logging.root.manager.disable
        logging.disable(logging.CRITICAL)
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        self._warn.__exit__(*exc)
        logging.disable(self._disabled)
        return False


quiet_torch = _quiet_torch


class FixedBatch(nn.Module):
    """Runs a graph exported for one batch size on any batch: chunks of `batch`, the last padded.

    A program exported (or an ONNX graph saved) with a fixed batch dimension rejects other
    batch sizes; padding with zeros and dropping the padded rows keeps every real row's output.
    """

    def __init__(self, inner: nn.Module, batch: int) -> None:
        super().__init__()
        self.inner, self.batch = inner, int(batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        pad = (-n) % self.batch
        if pad:
            x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
        outs = [self.inner(x[i:i + self.batch]) for i in range(0, len(x), self.batch)]
        return torch.cat(outs)[:n]


def _input_shape(gm: fx.GraphModule) -> tuple | None:
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            shape = getattr(val, "shape", None)
            return tuple(shape) if shape is not None else None
    return None


def static_batch(gm: nn.Module) -> int | None:
    """The batch size an exported graph is fixed to, when it fails on any other (else None)."""
    if not isinstance(gm, fx.GraphModule):
        return None
    shape = _input_shape(gm)
    if not shape or not all(isinstance(s, int) for s in shape):
        return None
    other = shape[0] + 1
    try:
        with torch.no_grad(), quiet_torch():
            gm(torch.zeros(other, *shape[1:]))
        return None
    except Exception:  # a reshape to the exported batch size fails on any other
        return shape[0]
