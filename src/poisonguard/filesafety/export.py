"""`torch.export` programs (`.pt2`), checked from their bytes before torch touches them.

`torch.export.load` unpickles with `weights_only=False` every weight and constant whose payload
config says `use_pickle: true`, unpickles opaque constants (`opaque_obj_*`) with plain `pickle`,
loads native custom objects (`custom_obj_*`), falls back to `weights_only=False` for the sample
inputs, evaluates every symbolic-shape `expr_str` with `sympy.sympify`, and `.module()` compiles
`guards_code` with `exec`. AOTInductor packages (`data/aotinductor/`) hold compiled shared
libraries. So: every pickle-bearing member must pass the allowlist walk, expressions and guards
must be plain arithmetic (`expressions.py`), graph targets must be allowlisted operators,
and members outside the known layout, custom objects and compiled code are refused.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

from poisonguard.filesafety.archives import ArchiveCheck
from poisonguard.filesafety.expressions import unsafe_expression
from poisonguard.filesafety.limits import LIMITS
from poisonguard.filesafety.operators import is_allowed_operator
from poisonguard.filesafety.pickles import walk_pickle
from poisonguard.filesafety.torchfiles import archive_prefix, check_torch_bytes

_KNOWN_FILES = {"archive_format", "archive_version", "byteorder", "version", ".data/version", ".data/serialization_id",
                ".format_version", ".storage_alignment"}
_KNOWN_DIRS = ("models/", "data/weights/", "data/constants/", "data/sample_inputs/", "extra/")
_CODE_DIRS = {"data/aotinductor/": "AOTInductor compiled code (a shared library loaded into the process)",
              "data/executorch/": "an ExecuTorch program", "data/mtia": "an MTIA payload",
              "xl_model_weights/": "an XL weights payload poisonguard does not read"}
MAX_FINDINGS = 40
# Names `.module()` pastes into the Python source it generates and execs (torch.fx codegen):
# `getattr(self, "...")` for each segment of a parameter, buffer or constant name that is not an
# identifier, `def forward(self, NAME)` for each forward argument name, `'KEY'` for the keys
# of a dict input. A quote in any of them closes torch's string and what follows runs. So
# names must be plain: dotted identifiers (or digits, as nn.Sequential's), identifiers, and
# tree-spec strings free of quotes, backslashes and line breaks.
_SEGMENT = r"(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)"
_DOTTED_NAME = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STATE_NAME_KEYS = ("parameter_name", "buffer_name", "tensor_constant_name", "constant_name", "custom_obj_name")
_SPEC_KEYS = ("in_spec", "out_spec")
_UNSAFE_CHARACTERS = "'\"\\\n\r"


def check_export(check: ArchiveCheck) -> list[str]:
    prefix, findings = archive_prefix(check.names)
    # relative names folded to lower case: torch's reader finds members ignoring case, so
    # data/sample_inputs/model.PT is the model.pt torch deserialises
    inner = {name[len(prefix) + 1:].lower(): name for name in check.names}
    for rel, full in sorted(inner.items()):
        problem = _layout_problem(rel)
        if problem:
            findings.append(f"{full}: {problem}")
    fmt = check.read(inner["archive_format"], 64) if "archive_format" in inner else None
    if fmt is None or fmt.strip() != b"pt2":
        findings.append("archive_format is missing or not 'pt2'")
    for rel, full in sorted(inner.items()):
        if rel.startswith("models/") and rel.endswith(".json"):
            findings += _check_program(check, full)
        elif rel.startswith(("data/weights/", "data/constants/")) and rel.endswith("_config.json"):
            findings += _check_payload_config(check, full, rel.rsplit("/", 1)[0], inner, prefix)
        elif rel.endswith(".pt"):
            # sample inputs, legacy weights/constants files, TorchScript sample inputs: all unpickled by torch
            data = check.read(full, LIMITS.parsed_member)
            if data is not None:
                findings += check_torch_bytes(data, label=f"{full} > ", depth=1)
    return findings[:MAX_FINDINGS]


def _layout_problem(rel: str) -> str | None:
    for directory, what in _CODE_DIRS.items():
        if rel.startswith(directory):
            return what
    if rel in _KNOWN_FILES or rel.startswith(_KNOWN_DIRS):
        return None
    return "a member outside the torch.export archive layout"


def _load_json(check: ArchiveCheck, name: str) -> tuple[Any, list[str]]:
    data = check.read(name, LIMITS.parsed_member)
    if data is None:
        return None, []
    try:
        return json.loads(data), []
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return None, [f"{name}: not valid JSON ({type(exc).__name__})"]


def _check_program(check: ArchiveCheck, name: str) -> list[str]:
    program, findings = _load_json(check, name)
    if not isinstance(program, dict):
        return findings or [f"{name}: not a serialized ExportedProgram"]
    for guard in program.get("guards_code") or []:
        problem = unsafe_expression(guard, guard=True)
        if problem:
            findings.append(f"{name}: guards_code (compiled with exec by .module()): {problem}")
    for key in (program.get("range_constraints") or {}):
        problem = unsafe_expression(key)
        if problem:
            findings.append(f"{name}: range constraint: {problem}")
    for expr in _values_under(program, "expr_str"):
        problem = unsafe_expression(expr)
        if problem:
            findings.append(f"{name}: symbolic expression (evaluated by sympy.sympify): {problem}")
    for target in sorted(set(_values_under(program, "target"))):
        if not isinstance(target, str) or not is_allowed_operator(target):
            findings.append(f"{name}: graph calls {str(target)[:80]}, not a pure tensor operator on the allowlist")
    for text in _values_under(program, "as_string"):
        # .module() pastes a string input's value into the guard code it exec's, inside '...'
        if not isinstance(text, str) or any(c in text for c in _UNSAFE_CHARACTERS):
            findings.append(f"{name}: a string constant {str(text)[:60]!r} with quotes, backslashes or line breaks "
                            "(.module() pastes it into the guard code it compiles)")
    graph = (program.get("graph_module") or {}).get("graph") or {}
    if graph.get("custom_obj_values"):
        findings.append(f"{name}: the graph uses custom (native) objects")
    return findings + _pasted_name_problems(program, name)


def _pasted_name_problems(program: dict, name: str) -> list[str]:
    """Names that `.module()` pastes into the code it generates must be plain (see `_DOTTED_NAME`)."""
    findings = []
    for key in _STATE_NAME_KEYS:
        for value in _values_under(program, key):
            if not isinstance(value, str) or not _DOTTED_NAME.fullmatch(value):
                findings.append(f"{name}: {key} {str(value)[:60]!r} is not a dotted Python name (.module() pastes it "
                                "into the code it generates and runs)")
    for names in _values_under(program, "forward_arg_names", containers=True):
        for value in names if isinstance(names, list) else [names]:
            if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
                findings.append(f"{name}: forward argument name {str(value)[:60]!r} is not a Python identifier "
                                "(.module() pastes it into the def line it generates)")
    for key in _SPEC_KEYS:
        for spec in _values_under(program, key):
            text = _unsafe_spec_string(spec)
            if text is not None:
                findings.append(f"{name}: {key} holds {text[:60]!r}, with quotes, backslashes or line breaks "
                                "(.module() pastes a dict input's keys into the code it generates)")
    return findings


def _unsafe_spec_string(value: Any, depth: int = 0) -> str | None:
    """The first string of a serialized tree spec (JSON, whose context strings are JSON again)
    that holds a quote, backslash or line break once decoded; None when there is none."""
    if depth > 20:
        return "<nested too deep>"
    if isinstance(value, str):
        if value[:1] in "[{":
            try:
                return _unsafe_spec_string(json.loads(value), depth + 1)
            except (ValueError, RecursionError):
                pass
        return value if any(c in value for c in _UNSAFE_CHARACTERS) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        bad = _unsafe_spec_string(key, depth + 1) if isinstance(key, str) else None
        bad = bad or _unsafe_spec_string(item, depth + 1)
        if bad is not None:
            return bad
    return None


def _values_under(obj: Any, key: str, depth: int = 0, *, containers: bool = False) -> Iterator[Any]:
    """Every value stored under `key` at any depth of a JSON tree (lists and dicts too with `containers`)."""
    if depth > 200:
        yield f"<JSON nested deeper than {depth}>"
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key and (containers or not isinstance(v, (dict, list))):
                yield v
            else:
                yield from _values_under(v, key, depth + 1, containers=containers)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values_under(v, key, depth + 1, containers=containers)


def _check_payload_config(check: ArchiveCheck, name: str, folder: str, inner: dict[str, str], prefix: str) -> list[str]:
    config, findings = _load_json(check, name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        return findings or [f"{name}: not a payload config"]
    for fqn, meta in entries.items():
        if not _DOTTED_NAME.fullmatch(fqn):
            findings.append(f"{name}: entry {fqn[:60]!r} is not a dotted Python name (.module() pastes it into the "
                            "code it generates and runs)")
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            findings.append(f"{name}: entry {str(fqn)[:60]!r} has no path_name")
            continue
        path_name = meta["path_name"]
        if "/" in path_name or path_name.startswith("."):
            findings.append(f"{name}: entry {fqn!r} points outside its folder ({path_name!r})")
            continue
        member = inner.get(f"{folder}/{path_name}".lower())
        if path_name.lower().startswith("custom_obj_"):
            findings.append(f"{name}: {fqn!r} is a native custom object (torch._C._pickle_load_obj runs its class code)")
        elif path_name.lower().startswith("opaque_obj_"):
            data = check.read(member, LIMITS.parsed_member) if member else None
            if data is not None:  # read back by the plain unpickler
                findings += walk_pickle(data, context=f"{member} (opaque object, read by the plain unpickler)").findings
        elif meta.get("use_pickle"):
            data = check.read(member, LIMITS.parsed_member) if member else None
            if data is not None:  # torch would unpickle this with its unsafe loader
                findings += check_torch_bytes(data, label=f"{member} (use_pickle) > ", depth=1)
        findings += _tensor_meta_problems(name, fqn, meta.get("tensor_meta"))
    return findings


def _tensor_meta_problems(name: str, fqn: str, meta: Any) -> list[str]:
    if meta is None:
        return []
    sizes = meta.get("sizes") if isinstance(meta, dict) else None
    if not isinstance(sizes, list):
        return [f"{name}: {fqn!r} has no sizes"]
    count = 1
    for size in sizes:
        value = size.get("as_int") if isinstance(size, dict) else None
        if isinstance(value, int) and value >= 0:
            count *= value
        elif isinstance(size, dict) and "as_expr" in size:
            continue
        else:
            return [f"{name}: {fqn!r} has a size that is not a count"]
    if count > LIMITS.elements:
        return [f"{name}: {fqn!r} claims {count} elements, over the limit of {LIMITS.elements}"]
    return []
