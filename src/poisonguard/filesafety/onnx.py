"""ONNX models: a protobuf graph of standard operators, possibly with tensors stored in other files.

ONNX carries no Python, but a model can point its external data at any path (`/etc/passwd`,
`../../secret`) and have the runtime read it, use operators of custom domains (native code a
runtime registers), or declare tensors far larger than the file. Checked without loading any
external data: every external location is a relative path that stays inside the model's
folder, every node's domain is a standard one (or a function the model itself defines from
standard operators), and every initializer's declared size is within the element limit and,
when stored inline, matches its bytes.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from poisonguard.filesafety.limits import LIMITS

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"})
_BYTES_PER = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}


def check_onnx(handle: BinaryIO, size: int, path: Path) -> list[str]:
    import onnx
    import onnx.shape_inference

    if size > LIMITS.onnx_bytes:
        return [f"an ONNX file of {size} bytes, over protobuf's {LIMITS.onnx_bytes}-byte limit"]
    handle.seek(0)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(handle.read())
    except Exception as exc:  # protobuf's DecodeError
        return [f"not a readable ONNX model ({type(exc).__name__})"]
    findings: list[str] = []
    local = {(f.domain, f.name) for f in model.functions}
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS and opset.domain not in {d for d, _ in local}:
            findings.append(f"imports operator set of custom domain {opset.domain!r}")
    for graph_name, node in _nodes(model):
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local:
            findings.append(f"{graph_name}: node {node.op_type} of custom domain {node.domain!r}")
    for tensor in graph_tensors(model):
        findings += _tensor_problems(tensor, path)
    if not findings:
        findings += _function_expansion(model)
    if not findings:  # the graph is well formed: what would running it allocate?
        findings += _computed_bombs(onnx, model)
    return sorted(set(findings))[:40]


def _computed_bombs(onnx: Any, model: Any) -> list[str]:
    """Values the graph computes whose shape is fixed by constants in the file and over the limit.

    A few bytes of `ConstantOfShape`, `Expand` or `Tile` fed a constant shape make the runtime
    allocate terabytes on the first forward pass. ONNX's shape inference, propagating constant
    shape arithmetic (`data_prop`), gives each value's static shape; unknown dimensions (the
    batch) count as 1, so this bounds what one input costs. A graph it cannot infer is left
    to the sandboxed trial load.
    """
    try:
        findings = _folded_bombs(model)  # constant arithmetic the inference does not propagate (an Abs)
    except Exception:  # a tensor numpy cannot read: left to the inference below
        findings = []
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # an operator or opset the inference does not know
        return findings
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        if math.prod(dims) > LIMITS.computed_elements:
            findings.append(f"computes {value.name!r} of shape {dims[:8]} for one input "
                            f"(over the limit of {LIMITS.computed_elements} elements)")
    return findings[:5]


def _nodes(model: Any):
    for function in model.functions:
        for node in function.node:
            yield f"function {function.name}", node
    yield from _graph_nodes(model.graph, "graph", 0)


def _graph_nodes(graph: Any, name: str, depth: int):
    if depth > 20:
        return
    for node in graph.node:
        yield name, node
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _graph_nodes(sub, f"{name}/{node.op_type}", depth + 1)


# Operators folded when every input is a small constant, and the inputs of the operators whose
# output size they fix.
_BROADCASTING = frozenset({"Abs", "Neg", "Add", "Sub", "Mul", "Div", "Max", "Min", "Floor", "Ceil", "Sqrt", "Pow",
                           "Clip", "Sign", "Round", "Sum", "Mod", "Where", "Equal", "Less", "Greater", "Not", "And",
                           "Or", "Cast", "Identity"})
_FOLDABLE = _BROADCASTING | {"Concat", "Unsqueeze", "Squeeze", "Reshape", "Gather", "Slice", "ReduceProd", "ReduceSum",
                             "ReduceMax", "ReduceMin", "Shape", "Size"}
_SIZE_INPUTS = {"ConstantOfShape": (0, 1), "Expand": (1, 2), "Tile": (1, 2), "Range": (0, 3)}  # [first, stop)
_SMALL = 4096  # elements of a constant worth folding (shapes are a few numbers)


def _folded_bombs(model: Any) -> list[str]:
    """Fold the graph's small constants through `_FOLDABLE` operators (ONNX's reference
    evaluator, one node at a time) and size each `_SIZE_INPUTS` operator fed by them."""
    import numpy as np
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    def small(tensor) -> bool:  # stored in the file (never external data, which would be read) and tiny
        return math.prod(tensor.dims) <= _SMALL and not (tensor.data_location == 1 or tensor.external_data)

    values: dict[str, Any] = {}
    # every value computed from the file's constants alone (folded or not); graph inputs are not
    constant = {tensor.name for tensor in model.graph.initializer}
    for tensor in model.graph.initializer:
        if small(tensor):
            values[tensor.name] = numpy_helper.to_array(tensor)
    findings = []
    for node in list(model.graph.node)[:20_000]:
        inputs = [name for name in node.input if name]
        if all(name in constant for name in inputs):
            constant.update(node.output)
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            if small(node.attribute[0].t):
                values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type in _FOLDABLE and inputs and all(name in values for name in inputs):
            if _fold_bound(node.op_type, [values[name] for name in inputs]) > _SMALL:
                continue  # folding it would itself allocate what the check guards against
            try:
                outputs = ReferenceEvaluator(node).run(None, {name: values[name] for name in inputs})
            except Exception:  # an attribute or type the evaluator refuses: not folded
                continue
            values.update((name, np.asarray(out)) for name, out in zip(node.output, outputs)
                          if np.asarray(out).size <= _SMALL)
        elif node.op_type in _SIZE_INPUTS:
            first, stop = _SIZE_INPUTS[node.op_type]
            sizes = list(node.input)[first:stop]
            if len(sizes) != stop - first:
                continue
            if not all(name in values for name in sizes):
                if all(name in constant for name in sizes):  # fixed by the file, by arithmetic not folded here
                    findings.append(f"{node.op_type} {node.name or node.output[0]!r} takes its size from the file's "
                                    "constants through operators poisonguard does not evaluate, so its size is "
                                    "unknown before it runs")
                continue
            size = _output_elements(node.op_type, [values[name] for name in sizes])
            if size > LIMITS.computed_elements:
                findings.append(f"{node.op_type} {node.name or node.output[0]!r} makes {size:.3g} elements from the "
                                f"file's constants (over the limit of {LIMITS.computed_elements})")
    return findings[:5]


def _fold_bound(op: str, arrays: list) -> float:
    """At most how many elements folding `op` on `arrays` makes (broadcasting multiplies shapes:
    Max of (n,1,1), (1,n,1), (1,1,n) constants of n elements each makes n^3)."""
    import numpy as np

    if op in _BROADCASTING:
        try:
            return float(math.prod(np.broadcast_shapes(*(np.shape(a) for a in arrays))))
        except ValueError:
            return math.inf
    if op == "Gather":
        return float(np.size(arrays[0])) * float(np.size(arrays[1])) if len(arrays) > 1 else math.inf
    return float(sum(np.size(a) for a in arrays))


def _function_expansion(model: Any) -> list[str]:
    """Local functions calling each other: ONNX's shape inference expands every call, so a chain
    of functions each calling the next twice costs 2^depth (22 levels: 13 s; 40: years)."""
    local = {(f.domain, f.name): f for f in model.functions}
    cost: dict[tuple[str, str], float] = {}

    def expanded(key, stack: tuple) -> float:
        if key in stack:
            return math.inf  # a function calling itself never ends
        if key not in cost:
            cost[key] = sum(1 + (expanded((n.domain, n.op_type), stack + (key,)) if (n.domain, n.op_type) in local
                                 else 0) for n in local[key].node)
        return cost[key]

    total = sum(1 + (expanded((n.domain, n.op_type), ()) if (n.domain, n.op_type) in local else 0)
                for n in model.graph.node)
    if total > LIMITS.expanded_nodes:
        return [f"its local functions expand to {total:.3g} nodes (over the limit of {LIMITS.expanded_nodes}; "
                "a function that calls itself never ends)"]
    return []


def _output_elements(op: str, sizes: list) -> float:
    """Elements the operator allocates, from its constant size inputs (the shape, the repeats, or
    Range's start, limit and delta); a lower bound where the data's own shape is unknown."""
    import numpy as np

    if op == "Range":
        start, limit, delta = (float(np.asarray(a).reshape(-1)[0]) for a in sizes)
        return 0.0 if delta == 0 else max(0.0, math.ceil((limit - start) / delta))
    shape = np.abs(np.asarray(sizes[0], dtype=np.float64)).reshape(-1)
    return float(np.prod(shape)) if shape.size else 1.0


def graph_tensors(model: Any):
    """Initializers (dense and sparse) and tensor attributes of every (sub)graph."""
    graphs = [model.graph]
    seen = 0
    while graphs and seen < 10_000:
        graph = graphs.pop()
        seen += 1
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)


def _tensor_problems(tensor: Any, path: Path) -> list[str]:
    count = math.prod(tensor.dims) if tensor.dims else 1
    if any(d < 0 for d in tensor.dims) or count > LIMITS.elements:
        return [f"tensor {tensor.name!r} declares dims {list(tensor.dims)[:8]} (over the limit of {LIMITS.elements} elements)"]
    if tensor.data_location == 1 or tensor.external_data:  # EXTERNAL
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        problem = _escapes(location, path)
        if problem:
            return [f"tensor {tensor.name!r}: external data {problem}"]
        for key in ("offset", "length"):
            if key in entries and (not entries[key].isdigit() or int(entries[key]) > LIMITS.archive_bytes):
                return [f"tensor {tensor.name!r}: external data {key} {entries[key][:30]!r}"]
        return []
    width = _BYTES_PER.get(tensor.data_type)
    if tensor.raw_data and width and len(tensor.raw_data) != count * width:
        return [f"tensor {tensor.name!r}: {len(tensor.raw_data)} bytes for dims {list(tensor.dims)} ({count * width} needed)"]
    return []


def _escapes(location: str, model_path: Path) -> str | None:
    if not location:
        return "without a location"
    pure = PurePosixPath(location.replace("\\", "/"))
    if pure.is_absolute() or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        return f"at an absolute path {location[:80]!r}"
    if ".." in pure.parts:
        return f"climbing out of the model's folder {location[:80]!r}"
    folder = model_path.resolve().parent
    target = (folder / pure).resolve()
    if folder != target and folder not in target.parents:
        return f"leaving the model's folder through a link {location[:80]!r}"
    return None
