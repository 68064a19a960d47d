"""Allowlist-first pickle check: walk the opcodes, never unpickle.

A pickle runs code through the globals it imports (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) and
the calls it makes on them (REDUCE, NEWOBJ, BUILD). `walk_pickle` simulates the pickle machine's
stack symbolically (`pickletools.genops` decodes the opcodes, nothing is imported), so a
STACK_GLOBAL's module and name are resolved however they were pushed: plain strings, strings
fetched back from the memo (BINPUT/MEMOIZE then BINGET), or not resolvable at all (then unsafe).
Every global must be in a small vetted set, and the ones that get *called* must be in a
smaller one: a storage class or dtype may appear as data, but calling `torch.FloatStorage(1e11)`
is a memory bomb, so it is not on the callable list. Denylist scanners miss whatever they did not
think of (`pkgutil.resolve_name`, `torch.utils.collect_env.run`, `builtins.bytearray`); here
anything not vetted is a finding.
"""

from __future__ import annotations

import io
import math
import pickletools
from dataclasses import dataclass, field
from typing import Any, Iterable

# Called while a torch.save file (state dict, checkpoint) is unpickled: tensor rebuilders and
# containers. Arguments are tensors, tuples and plain numbers.
TORCH_CALLABLES = frozenset({
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_meta_tensor_no_storage",  # shape and dtype only, no data
    "collections.OrderedDict",
    "torch.Size",
    "torch.device",
})

# Appear as data only: the storage type or dtype a rebuilder is given.
_STORAGE_NAMES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
                  "ComplexFloat", "ComplexDouble", "Untyped", "QUInt8", "QInt8", "QInt32", "QUInt4x2", "QUInt2x4")
_DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
                "uint16", "uint32", "uint64", "complex32", "complex64", "complex128", "float", "double", "half",
                "long", "int", "short", "cfloat", "cdouble", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                "float8_e5m2fnuz", "float8_e8m0fnu", "quint8", "qint8", "qint32", "quint4x2", "quint2x4")
_QSCHEMES = ("per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
             "per_channel_affine_float_qparams")
TORCH_DATA = frozenset(
    {f"torch.{n}Storage" for n in _STORAGE_NAMES}
    | {"torch.storage.UntypedStorage", "torch.storage.TypedStorage"}
    | {f"torch.{n}" for n in _DTYPE_NAMES + _QSCHEMES}
    | {"torch.contiguous_format", "torch.channels_last", "torch.channels_last_3d", "torch.preserve_format", "torch.strided"}
)

# numpy arrays and scalars inside checkpoints (e.g. a metric kept as np.float64); object dtypes
# are refused by `_check_call` below.
NUMPY_CALLABLES = frozenset({
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer",  # protocol 5 arrays
    "numpy.dtype",
})
NUMPY_DATA = frozenset({"numpy.ndarray"})
PLAIN_NUMPY_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"})

# `_codecs.encode(text, "latin1")` is how protocol 2 writes bytes (numpy buffers); any other use
# (another codec, a non-string argument) is refused.
CODECS_ENCODE = "_codecs.encode"

# The TorchScript unpickler (C++) resolves these itself; it never imports Python.
TORCHSCRIPT_CALLABLES = frozenset({
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_qtensor", "collections.OrderedDict",
    "torch.jit._pickle.build_intlist", "torch.jit._pickle.build_floatlist", "torch.jit._pickle.build_boollist",
    "torch.jit._pickle.build_doublelist", "torch.jit._pickle.build_tensorlist", "torch.jit._pickle.build_tensor_from_id",
    "torch.jit._pickle.restore_type_tag",
})


@dataclass(frozen=True)
class PicklePolicy:
    """Which globals a pickle may name, and which of those it may call."""

    callables: frozenset[str]
    data: frozenset[str]
    # TorchScript archives: classes `__torch__.<module>.<Class>` that the archive's own code defines.
    script_classes: frozenset[str] = frozenset()


TORCH_POLICY = PicklePolicy(callables=TORCH_CALLABLES | NUMPY_CALLABLES | {CODECS_ENCODE},
                            data=TORCH_DATA | NUMPY_DATA)


def torchscript_policy(script_classes: Iterable[str]) -> PicklePolicy:
    return PicklePolicy(callables=TORCHSCRIPT_CALLABLES, data=TORCH_DATA, script_classes=frozenset(script_classes))


@dataclass
class PickleReport:
    """What one pickle imports and what makes it unsafe; `storages` lists its persistent ids."""

    globals: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    storages: list[tuple[Any, ...]] = field(default_factory=list)
    end: int = 0  # offset just past the STOP opcode


class _Global(str):
    """A global the pickle imported (its dotted name), as a value on the simulated stack."""


class _Unknown:
    """A value the walk does not track (the result of a call, a container being filled)."""

    def __init__(self, origin: str | None = None) -> None:
        self.origin = origin  # the allowlisted global whose call produced it, if any


class _Storage(_Unknown):
    """A tensor storage the pickle loads by persistent id ('storage', type, key, location, numel)."""

    def __init__(self, pid: tuple[Any, ...]) -> None:
        super().__init__("persistent_load")
        self.numel = pid[4] if len(pid) >= 5 and isinstance(pid[4], int) else None


_MARK = object()
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_CONST_OPS = _STRING_OPS | {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
                            "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}
_TUPLES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
MAX_FINDINGS = 20


def walk_pickle(data: bytes | io.BufferedIOBase, policy: PicklePolicy = TORCH_POLICY, *, context: str = "pickle") -> PickleReport:
    """Walk one pickle (up to its STOP) and judge every global it names against `policy`."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return _Walk(policy, context).run(stream)


class _Walk:
    """The pickle machine run symbolically: a stack and a memo of tracked values, no imports."""

    def __init__(self, policy: PicklePolicy, context: str) -> None:
        self.policy, self.context = policy, context
        self.report = PickleReport()
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.handlers = {name: handler for names, handler in (
            (_CONST_OPS, lambda op, arg: self.stack.append(arg)),
            (("NONE", "NEWTRUE", "NEWFALSE"), lambda op, arg: self.stack.append(_SINGLETONS[op])),
            (("MARK",), lambda op, arg: self.stack.append(_MARK)),
            (("PUT", "BINPUT", "LONG_BINPUT"), lambda op, arg: self.memo.__setitem__(int(arg), self.top())),
            (("MEMOIZE",), lambda op, arg: self.memo.__setitem__(len(self.memo), self.top())),
            (("GET", "BINGET", "LONG_BINGET"), self.get),
            (("GLOBAL",), lambda op, arg: self.stack.append(self.name_global(*str(arg).partition(" ")[::2]))),
            (("STACK_GLOBAL",), self.stack_global),
            (("INST",), lambda op, arg: self.stack.append(
                self.call(self.name_global(*str(arg).partition(" ")[::2]), tuple(self.pop_mark()), op))),
            (("OBJ",), self.obj),
            (("EXT1", "EXT2", "EXT4"), self.extension),
            (("REDUCE", "NEWOBJ", "NEWOBJ_EX"), self.reduce),
            (("BUILD",), self.build),
            (("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"), self.make_tuple),
            (("BINPERSID", "PERSID"), self.persistent_id),
            (("SETITEMS", "APPENDS", "ADDITEMS"), lambda op, arg: self.pop_mark()),  # the container keeps its origin
            (("SETITEM",), lambda op, arg: (self.pop(), self.pop())),
            (("APPEND",), lambda op, arg: self.pop()),
            (("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"), lambda op, arg: self.stack.append(_Unknown())),
        ) for name in names}

    def run(self, stream) -> PickleReport:
        stopped = False
        try:
            for opcode, arg, pos in pickletools.genops(stream):
                self.report.end = pos + 1
                if opcode.name == "STOP":
                    stopped = True
                    break
                handler = self.handlers.get(opcode.name)
                if handler is None:
                    self.generic(opcode)
                else:
                    handler(opcode.name, arg)
        except Exception as exc:  # genops raises ValueError and friends on a malformed stream
            self.finding(f"malformed pickle ({type(exc).__name__}: {str(exc)[:120]})")
        else:
            if not stopped:
                self.finding("pickle ends without STOP")
        return self.report

    # -- stack helpers
    def finding(self, text: str) -> None:
        if len(self.report.findings) < MAX_FINDINGS and f"{self.context}: {text}" not in self.report.findings:
            self.report.findings.append(f"{self.context}: {text}")

    def top(self) -> Any:
        return self.stack[-1] if self.stack else _Unknown()

    def pop(self) -> Any:
        return self.stack.pop() if self.stack else _Unknown()

    def pop_mark(self) -> list[Any]:
        items: list[Any] = []
        while self.stack:
            item = self.stack.pop()
            if item is _MARK:
                return items[::-1]
            items.append(item)
        self.finding("malformed pickle: no MARK for a MARK-based opcode")
        return items[::-1]

    # -- opcodes that name or call globals
    def name_global(self, module: str, attr: str) -> _Global:
        dotted = f"{module}.{attr}"
        if dotted not in self.report.globals:
            self.report.globals.append(dotted)
        if not _allowed_name(dotted, self.policy):
            self.finding(f"imports {dotted}")
        return _Global(dotted)

    def stack_global(self, op: str, arg: Any) -> None:
        attr, module = self.pop(), self.pop()
        plain = all(isinstance(v, str) and not isinstance(v, _Global) for v in (module, attr))
        if plain:
            self.stack.append(self.name_global(module, attr))
        else:
            self.finding("STACK_GLOBAL whose module or name is not a plain string")
            self.stack.append(_Unknown())

    def call(self, func: Any, args: Any, how: str) -> _Unknown:
        if isinstance(func, _Global):
            problem = _check_call(str(func), args, self.policy)
            if problem:
                self.finding(problem)
            return _Unknown(str(func))
        if isinstance(func, _Unknown) and func.origin is None:
            self.finding(f"{how} on a value the check cannot resolve")
        elif isinstance(func, _Unknown):
            self.finding(f"{how} on the result of {func.origin}")
        else:
            self.finding(f"{how} on a non-callable constant")
        return _Unknown()

    def obj(self, op: str, arg: Any) -> None:
        items = self.pop_mark()
        self.stack.append(self.call(items[0] if items else _Unknown(), tuple(items[1:]), op))

    def extension(self, op: str, arg: Any) -> None:
        self.finding(f"{op} (a global from the copyreg extension registry, code {arg})")
        self.stack.append(_Unknown())

    def reduce(self, op: str, arg: Any) -> None:
        if op == "NEWOBJ_EX":
            self.pop()  # kwargs
        args, func = self.pop(), self.pop()
        self.stack.append(self.call(func, args, op))

    def build(self, op: str, arg: Any) -> None:
        self.pop()  # the state
        target = self.top()
        if not (isinstance(target, _Unknown) and target.origin is not None):
            self.finding("BUILD (sets state) on an object the check did not see made by a vetted call")

    # -- data
    def get(self, op: str, arg: Any) -> None:
        if int(arg) not in self.memo:
            self.finding(f"memo index {arg} read before it was written")
        self.stack.append(self.memo.get(int(arg), _Unknown()))

    def make_tuple(self, op: str, arg: Any) -> None:
        items = self.pop_mark() if op == "TUPLE" else [self.pop() for _ in range(_TUPLES.get(op, 0))][::-1]
        self.stack.append(tuple(items))

    def persistent_id(self, op: str, arg: Any) -> None:
        pid = self.pop() if op == "BINPERSID" else arg
        pid = pid if isinstance(pid, tuple) else (pid,)
        self.report.storages.append(pid)
        self.stack.append(_Storage(pid))

    def generic(self, opcode: pickletools.OpcodeInfo) -> None:
        """Any other opcode's stack effect, from its pickletools description."""
        before = list(opcode.stack_before)
        if pickletools.markobject in before:
            self.pop_mark()
            for _ in range(before.index(pickletools.markobject)):
                self.pop()
        else:
            for _ in before:
                self.pop()
        for _ in opcode.stack_after:
            self.stack.append(_Unknown())


_SINGLETONS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def _allowed_name(dotted: str, policy: PicklePolicy) -> bool:
    return dotted in policy.callables or dotted in policy.data or dotted in policy.script_classes


def _check_call(func: str, args: Any, policy: PicklePolicy) -> str | None:
    """Why calling `func(*args)` is unsafe, or None."""
    if func in policy.script_classes:
        return None  # TorchScript objects are made by NEWOBJ on their own class
    if func not in policy.callables:
        return f"calls {func}" if _allowed_name(func, policy) else None  # an unknown name is already reported
    if func == CODECS_ENCODE:
        if not (isinstance(args, tuple) and len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1"):
            return "calls _codecs.encode other than as protocol 2 encodes bytes"
    if func in TENSOR_REBUILDERS:
        return _check_tensor_view(args)
    if func == "numpy.dtype":
        spec = args[0] if isinstance(args, tuple) and args else None
        if not (isinstance(spec, str) and spec.lstrip("<>|=") in PLAIN_NUMPY_DTYPES):
            return f"numpy dtype {spec!r} is not a plain number type (only those are vetted; object arrays hold pickles)"
    return None


# torch's tensor rebuilders: (storage, storage_offset, size, stride, ...).
TENSOR_REBUILDERS = frozenset({"torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
                               "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_qtensor"})
# A view may show more elements than its storage holds only through zero strides (expand). A
# legitimate file rarely saves one, never a large one: past both bounds it is a memory bomb
# (the loader's dtype conversion materialises every element).
BROADCAST_FACTOR = 64
BROADCAST_FLOOR = 1 << 20


def _check_tensor_view(args: Any) -> str | None:
    """Why a rebuilt tensor's size is refused: unreadable, over the element limit, or far more
    elements than the storage behind it holds."""
    from poisonguard.filesafety.limits import LIMITS

    size = args[2] if isinstance(args, tuple) and len(args) >= 4 else None
    if not (isinstance(size, tuple) and all(isinstance(d, int) and not isinstance(d, bool) for d in size)):
        return "a tensor whose size is not a tuple of integers"
    if any(d < 0 for d in size):
        return f"a tensor of negative size {size[:8]}"
    count = math.prod(size)
    if count > LIMITS.elements:
        return f"a tensor of {count} elements (over the limit of {LIMITS.elements})"
    storage = args[0]
    held = storage.numel if isinstance(storage, _Storage) else None
    if held is not None and count > BROADCAST_FLOOR and count > BROADCAST_FACTOR * max(held, 1):
        return f"a tensor of {count} elements backed by a storage of {held} (a memory bomb through zero strides)"
    return None
