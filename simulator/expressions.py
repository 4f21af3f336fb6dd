"""GMF expressions (``"220 - #{age}"``): arithmetic over patient attributes, compiled once.

``#{name}`` reads the patient attribute ``name`` (``age`` is the age in whole years; a vital
sign of that name is used when no attribute has it). The rest is arithmetic: numbers,
``+ - * / % **``, parentheses and the functions min, max, abs, round, floor, ceil, sqrt,
exp, log and pow. Division is decimal (``10/4`` is 2.5). Nothing else is evaluated.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from modules.errors import ModuleError, SimulationError

__all__ = ["compile_expression"]

_REF = re.compile(r"#\{([^}]+)\}")
_BINOPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_FUNCS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "round": round, "floor": math.floor,
    "ceil": math.ceil, "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "pow": math.pow,
}

Evaluator = Callable[[Any, float], float]


def compile_expression(text: str, where: str) -> Evaluator:
    """Compile ``text``; the result evaluates it for (person, t). ``where`` names the
    module and state for error messages."""
    names: list[str] = []

    def repl(m: re.Match[str]) -> str:
        names.append(m.group(1).strip())
        return f"_v{len(names) - 1}"

    source = _REF.sub(repl, text)
    try:
        tree = ast.parse(source, mode="eval")
        fn = _build(tree.body, where, text)
    except (SyntaxError, ModuleError) as exc:
        detail = exc.args[0] if isinstance(exc, ModuleError) else exc.msg
        raise ModuleError(f"{where}: cannot parse expression {text!r} ({detail})") from None
    refs = tuple(names)

    def evaluate(person: Any, t: float) -> float:
        values = []
        for n in refs:
            if n == "age":
                values.append(float(person.age_years(t)))
                continue
            v = person.attributes.get(n, person.vitals.get(n))
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise SimulationError(f"{where}: expression {text!r} reads #{{{n}}}, "
                                      f"which is {'not set' if v is None else repr(v)}")
            values.append(float(v))
        try:
            return float(fn(values))
        except (ArithmeticError, ValueError) as exc:
            raise SimulationError(f"{where}: expression {text!r} failed: {exc}") from None
    return evaluate


def _build(node: ast.AST, where: str, text: str) -> Callable[[list[float]], float]:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        c = float(node.value)
        return lambda v: c
    if isinstance(node, ast.Name) and node.id.startswith("_v"):
        i = int(node.id[2:])
        return lambda v: v[i]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        op = _BINOPS[type(node.op)]
        a, b = _build(node.left, where, text), _build(node.right, where, text)
        return lambda v: op(a(v), b(v))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        a = _build(node.operand, where, text)
        return (lambda v: -a(v)) if isinstance(node.op, ast.USub) else a
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS \
            and not node.keywords:
        f = _FUNCS[node.func.id]
        args = [_build(a, where, text) for a in node.args]
        return lambda v: f(*(a(v) for a in args))
    raise ModuleError(f"unsupported element {ast.dump(node)[:40]}")
