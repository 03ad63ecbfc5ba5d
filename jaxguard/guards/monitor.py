"""`MonitorExpression`: a metric name or an arithmetic expression of metrics, compiled safely."""

from __future__ import annotations

import ast
import difflib
import operator
from collections.abc import Iterable, Mapping

import numpy as np

_VAL_PREFIX = "val_"
_BINARY_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_ALLOWED = "use numbers, metric names, + - * /, unary - and parentheses"


def _canonical(name: str) -> str:
    """The metric a name refers to: validation metrics are unprefixed, so `val_` is dropped."""
    if name.startswith(_VAL_PREFIX) and len(name) > len(_VAL_PREFIX):
        return name[len(_VAL_PREFIX) :]
    return name


class MonitorExpression:
    """A metric name or an arithmetic expression of validation metrics, compiled safely.

    The grammar is numbers, metric names, ``+ - * /``, unary ``-`` and parentheses, checked on
    the parsed syntax tree, so ``"r2"``, ``"loss - 2 * r2"`` and ``"-(loss + r2) / 2"`` are
    accepted while calls, attribute access, subscripts, other operators and non-numeric
    constants raise ValueError naming the offending part. Nothing is passed to `eval`.

    Names resolve against a dict of validation metrics with unprefixed keys (``{"loss": 0.53,
    "r2": -0.2}``); a ``val_`` prefix is accepted and dropped, so ``"val_loss - 2*r2"`` reads
    the metrics ``loss`` and ``r2``. Arithmetic is float64 and follows IEEE rules: a division by
    zero gives +-inf or NaN (which `EarlyStopping` treats as non-finite) rather than raising.

    Attributes:
      source: The expression as given, without surrounding whitespace.
      names: The metric names it reads (prefix dropped), in order of first appearance.
    """

    def __init__(self, source: str):
        if not isinstance(source, str) or not source.strip():
            raise ValueError(
                f"MonitorExpression: `source` must be a non-empty string, got {source!r}."
            )
        self.source = source.strip()
        try:
            tree = ast.parse(self.source, mode="eval")
        except SyntaxError as error:
            raise ValueError(
                f"monitor {self.source!r} is not a valid expression ({error.msg}); {_ALLOWED}."
            ) from None
        self._body = tree.body
        names: list[str] = []
        self._check_node(self._body, names)
        self.names = tuple(names)

    def _check_node(self, node: ast.expr, names: list[str]) -> None:
        """Fails on any node outside the grammar; collects the metric names in source order."""
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATORS:
            self._check_node(node.left, names)
            self._check_node(node.right, names)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            self._check_node(node.operand, names)
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return
        elif isinstance(node, ast.Name):
            name = _canonical(node.id)
            if name not in names:
                names.append(name)
        else:
            raise ValueError(
                f"monitor {self.source!r}: {self._describe(node)} "
                f"`{ast.get_source_segment(self.source, node)}` is not allowed; {_ALLOWED}."
            )

    @staticmethod
    def _describe(node: ast.expr) -> str:
        if isinstance(node, ast.Call):
            return "the call"
        if isinstance(node, ast.Attribute):
            return "the attribute access"
        if isinstance(node, ast.Subscript):
            return "the subscript"
        if isinstance(node, ast.Constant):
            return "the non-numeric constant"
        if isinstance(node, ast.BinOp | ast.UnaryOp):
            return f"the operator {type(node.op).__name__} in"
        return f"the {type(node).__name__} expression"

    def validate(self, available_names: Iterable[str]) -> None:
        """Fails, in one line naming the closest available metric, when a name is unknown."""
        available = sorted(set(available_names))
        unknown = []
        for name in self.names:
            if name not in available:
                close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                unknown.append(f"{name!r}{hint}")
        if unknown:
            raise ValueError(
                f"monitor {self.source!r}: unknown metric {', '.join(unknown)}; "
                f"available: {', '.join(available)}."
            )

    def evaluate(self, metrics: Mapping[str, float]) -> float:
        """The value of the expression on one evaluation's metrics.

        Raises:
          KeyError: a metric the expression reads is missing; the message lists the available ones.
        """
        missing = [name for name in self.names if name not in metrics]
        if missing:
            raise KeyError(
                f"monitor {self.source!r} reads {', '.join(missing)}, missing from the metrics; "
                f"available: {', '.join(sorted(metrics))}."
            )
        # Why: a zero denominator must give inf/NaN for the finite check, not a warning or raise.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return float(self._evaluate(self._body, metrics))

    def _evaluate(self, node: ast.expr, metrics: Mapping[str, float]) -> np.float64:
        if isinstance(node, ast.BinOp):
            return _BINARY_OPERATORS[type(node.op)](
                self._evaluate(node.left, metrics), self._evaluate(node.right, metrics)
            )
        if isinstance(node, ast.UnaryOp):
            return -self._evaluate(node.operand, metrics)
        if isinstance(node, ast.Constant):
            return np.float64(node.value)
        return np.float64(float(metrics[_canonical(node.id)]))
