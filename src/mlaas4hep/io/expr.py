"""Safe expressions over branches: ``selection`` and ``new_variables``.

Expressions are written in a small subset of Python, parsed with :mod:`ast` and
evaluated on awkward/numpy arrays. Nothing is ever passed to :func:`eval`, so a
configuration (or a bundle uploaded to the server) cannot run code.

Allowed: branch names, numbers, ``+ - * / // % **``, comparisons (chained too),
``and``/``or``/``not`` (element-wise), ``&``/``|``/``~``, and the functions in
:data:`FUNCTIONS`. Reductions (``sum``, ``max``, ``min``, ``count``, ``any``,
``all``, ``mean``) act on the innermost (jagged) axis, so ``sum(Jet_pt)`` is the
scalar HT of each event and ``any(Jet_btagDeepFlavB > 0.3)`` a per-event flag.

Per-object variables (a list per event, for input groups) come from
element-wise arithmetic on jagged branches, with two helpers: ``leading(x)``,
the first object's value in each event (0 for an event without objects; in
file order, which NanoAOD sorts by pt), broadcast against a collection, and
``deltaphi(a, b)``, ``a - b`` wrapped to [-π, π).

Examples::

    selection: "nJet >= 4 and MET_pt > 20"
    new_variables: {HT: "sum(Jet_pt)", nBtag: "count(Jet_btagDeepFlavB > 0.2783)"}
    new_variables:
      Jet_logpt: "log(Jet_pt)"
      Jet_deta: "Jet_eta - leading(Jet_eta)"              # Δη to the leading jet
      Jet_dphi: "deltaphi(Jet_phi, leading(Jet_phi))"     # Δφ to the leading jet, in [-π, π)
      Muon_dphi_met: "deltaphi(Muon_phi, MET_phi)"
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import ConfigError
from .lazyak import awkward, is_awkward


def _reduce(name: str, fill: float | None = None) -> Callable[[Any], Any]:
    """awkward's reducer ``name`` over each event's list; a flat value as it is."""

    def apply(x: Any) -> Any:  # an awkward or numpy array, or a number
        if is_awkward(x) and x.ndim > 1:
            ak = awkward()
            out = getattr(ak, name)(x, axis=-1)
            return ak.fill_none(out, fill) if fill is not None else out
        return x

    return apply


def _count(x: Any) -> Any:
    if is_awkward(x) and x.ndim > 1:
        ak = awkward()
        return ak.sum(x, axis=-1) if _is_bool(x) else ak.num(x, axis=-1)
    return x


def _is_bool(x: Any) -> bool:
    return str(awkward().type(x)).endswith("bool")


def _leading(x: Any) -> Any:
    """The first element of each event's list (0 for an empty list); a flat value as it is."""
    if is_awkward(x) and x.ndim > 1:
        ak = awkward()
        return ak.fill_none(ak.firsts(x, axis=-1), 0.0)
    return x


def _deltaphi(a: Any, b: Any) -> Any:
    """``a - b`` wrapped to [-π, π)."""
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def _where(cond: Any, a: Any, b: Any) -> Any:
    return awkward().where(cond, a, b) if is_awkward(cond) else np.where(cond, a, b)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sum": _reduce("sum"),
    "max": _reduce("max", fill=0.0),
    "min": _reduce("min", fill=0.0),
    "mean": _reduce("mean", fill=0.0),
    "any": _reduce("any"),
    "all": _reduce("all"),
    "count": _count,
    "len": _count,
    "abs": np.abs,
    "sqrt": np.sqrt,
    "log": np.log,
    "log1p": np.log1p,
    "exp": np.exp,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "tanh": np.tanh,
    "arctan2": np.arctan2,
    "minimum": np.minimum,
    "maximum": np.maximum,
    "where": _where,
    "leading": _leading,
    "deltaphi": _deltaphi,
}

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Invert: operator.invert,
    ast.Not: operator.invert,
}


#: C and ROOT ``TTree::Draw`` habits, and what to write instead
_SPELLINGS = (("&&", "and"), ("||", "or"), ("!", "not"))


def syntax_hint(source: str) -> str:
    """``; write 'and' instead of '&&'``, for the operators of C, or a general hint."""
    for wrong, right in _SPELLINGS:
        if wrong in source.replace("!=", ""):
            return f"; write {right!r} instead of {wrong!r} (expressions are Python: and, or, not)"
    return "; expressions are Python: e.g. 'nJet >= 4 and MET_pt > 20'"


def did_you_mean(name: str, candidates: Iterable[object]) -> str:
    """``; did you mean 'Jet_pt'?`` when a candidate is close to ``name`` (else ``""``)."""
    import difflib

    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=3, cutoff=0.6)
    if not close:
        lowered = {str(c).lower(): str(c) for c in candidates}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


class Expression:
    """A parsed, validated expression. ``names`` are the branches it reads."""

    def __init__(self, source: str):
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"expression must be a non-empty string, got {source!r}")
        self.source = source
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as err:
            raise ConfigError(f"invalid expression {source!r}: {err.msg}{syntax_hint(source)}") from None
        self._body = tree.body
        self.names: list[str] = []
        self._check(self._body)
        check_cost(self._body, source)

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            if node.id not in FUNCTIONS and node.id not in self.names:
                self.names.append(node.id)
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, bool)):
                raise ConfigError(f"in expression {self.source!r}: only numbers are allowed as constants")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = getattr(node.func, "id", ast.unparse(node.func))
                raise ConfigError(
                    f"in expression {self.source!r}: unknown function {name!r}"
                    + (did_you_mean(name, FUNCTIONS) or f"; allowed: {', '.join(sorted(FUNCTIONS))}")
                )
            if node.keywords:
                raise ConfigError(f"in expression {self.source!r}: keyword arguments are not allowed")
            for arg in node.args:
                self._check(arg)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            self._check(node.operand)
        elif isinstance(node, ast.BoolOp):
            for v in node.values:
                self._check(v)
        elif isinstance(node, ast.Compare) and all(type(op) in _CMPOPS for op in node.ops):
            self._check(node.left)
            for c in node.comparators:
                self._check(c)
        else:
            raise ConfigError(
                f"in expression {self.source!r}: {type(node).__name__} is not allowed "
                "(use branch names, numbers, arithmetic, comparisons and the listed functions)"
            )

    def evaluate(self, arrays: Mapping[str, Any]) -> Any:
        """Evaluate on a mapping of branch name to array (awkward or numpy)."""
        return self._eval(self._body, arrays)

    def _eval(self, node: ast.AST, arrays: Mapping[str, Any]) -> Any:
        if isinstance(node, ast.Name):
            if node.id not in arrays:
                raise ConfigError(
                    f"expression {self.source!r} uses {node.id!r}, which is not available"
                    + did_you_mean(node.id, arrays)
                )
            return arrays[node.id]
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)  # checked when parsed
            return FUNCTIONS[node.func.id](*(self._eval(a, arrays) for a in node.args))
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](self._eval(node.left, arrays), self._eval(node.right, arrays))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, arrays))
        if isinstance(node, ast.BoolOp):
            op = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            out = self._eval(node.values[0], arrays)
            for v in node.values[1:]:
                out = op(out, self._eval(v, arrays))
            return out
        if isinstance(node, ast.Compare):
            left, out = self._eval(node.left, arrays), None
            for cmp, comp in zip(node.ops, node.comparators):
                right = self._eval(comp, arrays)
                term = _CMPOPS[type(cmp)](left, right)
                out = term if out is None else out & term
                left = right
            return out
        raise AssertionError(node)  # _check forbids anything else


#: Cost bounds of an expression (see :func:`check_cost`).
MAX_SOURCE = 4096  # characters
MAX_NODES = 256  # AST nodes
MAX_CONSTANT = 1e18  # magnitude of a number written in the expression
MAX_EXPONENT = 64  # magnitude of a constant exponent


def check_cost(body: ast.AST, source: str) -> None:
    """Refuse expressions whose evaluation cost is not bounded by the size of the data.

    Array arithmetic costs a few operations per value, but Python evaluates
    the constant parts itself, on unbounded integers: ``9**9**7`` is
    ``9**4782969``, seconds of CPU for every request. So an expression has at
    most :data:`MAX_NODES` nodes (and :data:`MAX_SOURCE` characters), numbers
    of magnitude at most :data:`MAX_CONSTANT`, and in ``a ** b`` the exponent
    holds no ``**`` (no power towers) and, when it reads no branch, is a plain
    number of magnitude at most :data:`MAX_EXPONENT`.
    """
    if len(source) > MAX_SOURCE:
        raise ConfigError(f"expression of {len(source)} characters: at most {MAX_SOURCE} are allowed")
    nodes = list(ast.walk(body))
    if len(nodes) > MAX_NODES:
        raise ConfigError(f"expression {source[:80]!r} is too large: at most {MAX_NODES} terms")
    for node in nodes:
        # "not <=" also refuses nan
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, (int, float))
            and not abs(node.value) <= MAX_CONSTANT
        ):
            raise ConfigError(f"in expression {source[:80]!r}: constants must be at most {MAX_CONSTANT:g}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exp = node.right
            towers = [exp] + ([] if _reads_branch(node.left) else [node.left])
            if any(
                isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for t in towers for n in ast.walk(t)
            ):
                raise ConfigError(
                    f"in expression {source[:80]!r}: a power of a power (x**y**z) is not allowed"
                )
            if not _reads_branch(exp):
                if isinstance(exp, ast.UnaryOp) and isinstance(exp.op, (ast.USub, ast.UAdd)):
                    exp = exp.operand
                if not (
                    isinstance(exp, ast.Constant)
                    and isinstance(exp.value, (int, float))
                    and abs(exp.value) <= MAX_EXPONENT
                ):
                    raise ConfigError(
                        f"in expression {source[:80]!r}: a constant exponent must be a number "
                        f"from -{MAX_EXPONENT} to {MAX_EXPONENT}"
                    )


def _reads_branch(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id not in FUNCTIONS for n in ast.walk(node))


@lru_cache(maxsize=256)
def parse(source: str) -> Expression:
    """Parse (and cache) an expression."""
    return Expression(source)
