"""Symbolic-shape expressions inside `.pt2` files, which torch evaluates as Python.

`torch.export.load` passes every `expr_str` to `sympy.sympify`, which evaluates the string,
and `ExportedProgram.module()` compiles `guards_code` with `exec`. An expression is accepted
only when its syntax tree holds names, numbers and arithmetic on sympy's shape functions; no
attribute access, subscripts (except the guard's `L['x']` input paths), lambdas or dunders.
"""

from __future__ import annotations

import ast
import re

_SYMPY_FUNCTIONS = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan", "Equality", "Unequality",
    "And", "Or", "Not", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "IntTrueDiv", "FloatTrueDiv",
    "Identity", "OpaqueUnaryFn_sqrt", "floor", "ceiling", "sqrt", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
})
_CONSTANTS = frozenset({"oo", "zoo", "nan", "int_oo", "true", "false", "True", "False", "inf", "L", "math"})
_ASSUMPTIONS = frozenset({"integer", "positive", "negative", "nonnegative", "nonpositive", "real", "finite",
                          "zero", "nonzero", "even", "odd", "evaluate"})
_GUARD_METHODS = frozenset({"size", "stride", "dim", "storage_offset", "numel", "floor", "ceil", "trunc", "sqrt"})
_SYMBOL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,40}$")
_NODES = (ast.Expression, ast.Call, ast.Name, ast.Constant, ast.keyword, ast.BinOp, ast.UnaryOp, ast.BoolOp,
          ast.Compare, ast.Tuple, ast.List, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)
MAX_LENGTH = 20_000


def unsafe_expression(text: object, *, guard: bool = False) -> str | None:
    """Why `text` could do more than arithmetic when sympy or exec evaluates it, or None."""
    if not isinstance(text, str):
        return f"an expression that is not a string ({type(text).__name__})"
    if len(text) > MAX_LENGTH:
        return f"an expression of {len(text)} characters"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return f"an expression that does not parse: {text[:80]!r}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id.startswith("_") or not _SYMBOL.match(node.id):
                return f"name {node.id!r} in expression {text[:80]!r}"
        elif isinstance(node, ast.Constant):
            # only numbers, booleans, None and symbol-like strings: a bytes literal's quotes survive
            # ast.unparse and broke out of the string torch pastes a guard into (then exec'd)
            if isinstance(node.value, str):
                if not _SYMBOL.match(node.value):
                    return f"string {node.value[:40]!r} in expression {text[:80]!r}"
            elif not (node.value is None or isinstance(node.value, (bool, int, float))):
                return f"a {type(node.value).__name__} constant in expression {text[:80]!r}"
        elif isinstance(node, ast.keyword):
            if node.arg not in _ASSUMPTIONS:
                return f"keyword {node.arg!r} in expression {text[:80]!r}"
        elif isinstance(node, ast.Call):
            if not _allowed_call(node.func, guard):
                return f"a call to {ast.unparse(node.func)[:60]} in expression {text[:80]!r}"
        elif guard and isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            continue
        elif guard and isinstance(node, ast.Attribute) and node.attr in _GUARD_METHODS:
            continue
        elif not isinstance(node, _NODES):
            return f"{type(node).__name__} in expression {text[:80]!r}"
    return None


def _allowed_call(func: ast.AST, guard: bool) -> bool:
    if isinstance(func, ast.Name):
        return func.id in _SYMPY_FUNCTIONS
    return guard and isinstance(func, ast.Attribute) and func.attr in _GUARD_METHODS


def known_name(name: str) -> bool:
    return name in _SYMPY_FUNCTIONS or name in _CONSTANTS
