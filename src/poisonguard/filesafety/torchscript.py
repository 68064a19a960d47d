"""TorchScript archives: the code they carry, read as text before `torch.jit.load`, and its graphs after.

`torch.jit.load` compiles the archive's `code/**/*.py` (TorchScript source) and runs each
object's `__setstate__` while unpickling `data.pkl`; `forward` then runs whatever operators the
code calls. The static check refuses a module that defines `__setstate__`, calls an operator
outside `operators.ALLOWED_OPERATORS`, uses `torch.classes` (native custom classes) or custom
`ops.<ns>`, and a pickle global other than the archive's own `__torch__` classes and the
tensor rebuilders the TorchScript unpickler knows. `getattr(torch, "name")` is read as
`torch.name` (TorchScript compiles it to the same operator). `check_loaded_torchscript` walks
the inlined graph of every method and of every forward hook and pre-hook after loading, for
what text parsing cannot see: hooks run on each call but are not among a module's methods.
"""

from __future__ import annotations

import ast
from typing import Any

from poisonguard.filesafety.archives import ArchiveCheck
from poisonguard.filesafety.limits import LIMITS
from poisonguard.filesafety.operators import ALLOWED_OPERATORS, normalise_operator
from poisonguard.filesafety.pickles import torchscript_policy
from poisonguard.filesafety.torchfiles import archive_prefix, check_torch_zip

# Bare names TorchScript never compiles to anything but I/O: refused if the code calls them.
_REFUSED_CALLS = {"print": "prints (prim::Print)", "open": "opens a file", "exec": "runs Python",
                  "eval": "runs Python", "__import__": "imports Python", "compile": "compiles Python"}
_STATE_HOOKS = ("__setstate__",)


def check_torchscript(check: ArchiveCheck) -> list[str]:
    findings: list[str] = []
    prefix, problems = archive_prefix(check.names)
    findings += problems
    classes: set[str] = set()
    for name in check.names:
        low = name.lower()  # torch finds members ignoring case: code/X.PY is code too
        if not (low.startswith(f"{prefix.lower()}/code/") and low.endswith(".py")):
            continue
        source = check.read(name, LIMITS.parsed_member)
        if source is None:
            continue
        module = name[len(f"{prefix}/code/"):-3].replace("/", ".")
        findings += _check_source(source, module, name, classes)
    pickles = [n for n in check.names if n.lower().endswith((".pkl", ".debug_pkl"))]
    findings += check_torch_zip(check, policy=torchscript_policy(classes), pickles=pickles)
    return findings


def _check_source(source: bytes, module: str, name: str, classes: set[str]) -> list[str]:
    try:
        tree = ast.parse(source.decode("utf-8"), filename=name)
    except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
        return [f"{name}: TorchScript code that does not parse ({type(exc).__name__})"]
    visitor = _CodeVisitor(module)
    try:
        visitor.visit(tree)
    except RecursionError:
        return [f"{name}: TorchScript code nested too deeply to check"]
    classes.update(visitor.classes)
    return sorted({f"{name}: {problem}" for problem in visitor.problems})


class _CodeVisitor(ast.NodeVisitor):
    """Collects the classes a code file defines and what in it is refused."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.classes: set[str] = set()
        self.problems: list[str] = []

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.add(f"{self.module}.{node.name}")
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name in _STATE_HOOKS:
                self.problems.append(f"class {node.name} defines {item.name} (runs during torch.jit.load)")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        # judge the whole chain (torch.ops.aten.x) once, then look inside what it is rooted at
        problem = _check_chain(_chain(node))
        if problem:
            self.problems.append(problem)
        root: ast.AST = node
        while isinstance(root, ast.Attribute):
            root = root.value
        self.visit(root)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in _REFUSED_CALLS:
            self.problems.append(f"calls {node.func.id} ({_REFUSED_CALLS[node.func.id]})")
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
            self._check_getattr(node)
        self.generic_visit(node)

    def _check_getattr(self, node: ast.Call) -> None:
        """`getattr(torch.x, "name")` names the operator `torch.x.name`; serialised code uses
        getattr only for submodules with numeric names (`getattr(self.features, "0")`)."""
        target = node.args[0]
        base = [target.id] if isinstance(target, ast.Name) else _chain(target) if isinstance(target, ast.Attribute) else []
        if not base or base[0] not in ("torch", "ops"):
            return
        name = node.args[1] if len(node.args) > 1 else None
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            self.problems.append(f"reads an attribute of {'.'.join(base)} by a computed name")
            return
        problem = _check_chain([*base, name.value])
        if problem:
            self.problems.append(problem)


def _chain(node: ast.Attribute) -> list[str]:
    parts: list[str] = []
    current: Any = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if isinstance(current, ast.Name):
        parts.append(current.id)
        return parts[::-1]
    return []


def _check_chain(parts: list[str]) -> str | None:
    """Why an attribute chain rooted at `torch` or `ops` in TorchScript code is refused, or None."""
    if not parts or parts[0] not in ("torch", "ops"):
        return None
    if parts[0] == "torch" and len(parts) > 1 and parts[1] == "ops":
        parts = parts[1:]
    if parts[0] == "torch":
        if len(parts) >= 2 and parts[1] == "classes":
            return f"uses {'.'.join(parts)} (a native custom class)"
        op = f"aten::{parts[1]}" if len(parts) >= 2 else "torch"
    else:
        op = f"{parts[1]}::{parts[2]}" if len(parts) >= 3 else ".".join(parts)
    if op not in ALLOWED_OPERATORS:
        return f"calls {op} ({'.'.join(parts)}), not a pure tensor operator on the allowlist"
    return None


def graph_operators(graph: Any, found: set[str]) -> None:
    """Every node kind in a TorchScript graph, nested blocks included."""
    for node in graph.nodes():
        found.add(node.kind())
        for block in node.blocks():
            graph_operators(block, found)


def check_loaded_torchscript(module: Any) -> list[str]:
    """Findings for a module `torch.jit.load` returned: node kinds outside the allowlist, in any method.

    Run it right after loading and before calling anything; a non-empty answer means refuse.
    """
    kinds: set[str] = set()
    for sub in module.modules():
        scripted = getattr(sub, "_c", None)
        if scripted is None:
            continue
        for method_name in scripted._method_names():
            graph_operators(scripted._get_method(method_name).inlined_graph, kinds)
        for hook in [*scripted._get_forward_pre_hooks(), *scripted._get_forward_hooks()]:
            graph_operators(getattr(hook, "inlined_graph", hook.graph), kinds)
        if scripted._has_method("__setstate__"):
            kinds.add("__setstate__")
    refused = sorted(k for k in kinds if normalise_operator(k) not in ALLOWED_OPERATORS)
    return [f"TorchScript graph uses {kind}, not a pure tensor operator on the allowlist" for kind in refused]
