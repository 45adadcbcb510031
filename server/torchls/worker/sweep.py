"""Cost against input size: MACs, FLOPs and activation memory at several values of a named
dimension (`(1, L):long` swept over L=128,256,512,1024), and the exact polynomial through them.

Runs in the worker only. Each point is a full count on the meta device, so a sweep costs a few
forwards of milliseconds. Counts of convolutions, matmuls and attention are polynomials in a
sequence length or an image side (while strides divide it), so the fit is exact, with rational
coefficients, and it is checked on one more point that it was not fitted on.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction
from typing import Any

from torchls.source.spec import substitute_json, sweep_values, symbol_of_json
from torchls.worker.jobs import JobError
from torchls.worker.loading import _describe, _Loader
from torchls.worker.measure import count_forward
from torchls.worker.training import activation_bytes

MAX_DEGREE = 4
MAX_VALUES = 12
QUANTITIES = ("macs", "flops", "activation_bytes")


def concrete(spec_json: dict[str, Any], symbol: str, value: int) -> dict[str, Any]:
    """The inputs with the named dimension set to `value`: one point of the sweep."""
    return substitute_json(spec_json, symbol, value)


def nominal_value(spec_json: dict[str, Any], sweep: dict[str, Any] | None) -> int | None:
    """The value the main profile uses: the one written in the input (`L=512`), else the
    sweep's first; None when the input names a dimension and neither gives it a value."""
    nominal = spec_json.get("nominal")
    if isinstance(nominal, int) and nominal > 0:
        return nominal
    values = (sweep or {}).get("values") or []
    return int(values[0]) if values else None


def default_values(nominal: int) -> list[int]:
    """Sizes around a written value for a sweep the user did not list (see spec.sweep_values)."""
    return sweep_values(nominal)


def check_values(values: list[int]) -> list[int]:
    """Extra points the fit may be checked on, in order of preference: past the largest value
    by the last step, then halfway through the last step (a multiple of every value's common
    divisor, so strides that divide the values divide it too: a model whose positions end at
    the largest value still has a point to check on)."""
    ordered = sorted(values)
    step = ordered[-1] - ordered[-2] if len(ordered) > 1 else ordered[-1]
    candidates = [ordered[-1] + step]
    if len(ordered) > 1:
        common = math.gcd(*ordered)
        middle = ordered[-2] + (step // (2 * common)) * common
        if ordered[-2] < middle < ordered[-1]:
            candidates.append(middle)
    return candidates


def run_sweep(
    torch: Any,
    model: Any,
    spec_json: dict[str, Any],
    sweep_params: dict[str, Any],
    loader: _Loader,
    memory_limit_mb: int,
) -> dict[str, Any]:
    """The `sweep` part of a profile. Never raises: a point that cannot be counted ends the
    sweep with `error` (the points before it stay)."""
    symbol = str(sweep_params.get("symbol") or symbol_of_json(spec_json) or "")
    values = sorted({int(v) for v in sweep_params.get("values") or []})
    result: dict[str, Any] = {"symbol": symbol, "points": [], "check": None, "fits": {}}
    problem = _problem(symbol, values, spec_json)
    if problem:
        result["error"] = problem
        return result
    for value in values:
        point, error = _point(torch, model, spec_json, symbol, value, loader, memory_limit_mb)
        if error:
            result["error"] = f"at {symbol}={value:,}: {error}"
            return result
        result["points"].append(point)
    check_errors: list[str] = []
    for value in check_values(values):
        point, error = _point(torch, model, spec_json, symbol, value, loader, memory_limit_mb)
        if not error:
            result["check"] = point
            break
        check_errors.append(f"at {symbol}={value:,}: {error}")
    for quantity in QUANTITIES:
        result["fits"][quantity] = fit_quantity(
            symbol, result["points"], result["check"], quantity, "; ".join(check_errors)
        )
    return result


def _problem(symbol: str, values: list[int], spec_json: dict[str, Any]) -> str:
    if not symbol:
        return "the input names no dimension to sweep; write one, e.g. (1, L):long"
    if symbol_of_json(spec_json) != symbol:
        return f"the input has no dimension named {symbol}; write it, e.g. (1, {symbol}):long"
    if len(values) < 2:
        return f"a sweep needs at least two values of {symbol}"
    if len(values) > MAX_VALUES:
        return f"a sweep takes at most {MAX_VALUES} values of {symbol}"
    if values[0] < 1:
        return f"{symbol} must be at least 1"
    return ""


def _point(
    torch: Any,
    model: Any,
    spec_json: dict[str, Any],
    symbol: str,
    value: int,
    loader: _Loader,
    memory_limit_mb: int,
) -> tuple[dict[str, Any], str]:
    spec = concrete(spec_json, symbol, value)
    try:
        built = copy.deepcopy(model)
    except Exception:
        built = model
    try:
        counted = count_forward(torch, built, spec, loader, memory_limit_mb)
    except JobError as exc:  # already one sentence
        return {}, str(exc)
    except Exception as exc:
        return {}, _describe(exc, loader)
    point: dict[str, Any] = {
        "value": value,
        "macs": counted.measured["flops"] // 2,
        "flops": counted.measured["flops"],
        "activation_bytes": None,
        "mode": counted.mode,
    }
    if counted.varies:
        point["varies"] = True
    try:
        point["activation_bytes"] = activation_bytes(torch, counted, spec)
    except Exception as exc:
        point["activation_error"] = _describe(exc, loader)
    return point, ""


def fit_quantity(
    symbol: str,
    points: list[dict[str, Any]],
    check: dict[str, Any] | None,
    quantity: str,
    check_error: str = "",
) -> dict[str, Any]:
    """The smallest-degree polynomial with rational coefficients through every point (up to
    degree 4), and whether it predicts the check point exactly."""
    if any(point.get(quantity) is None for point in [*points, *([check] if check else [])]):
        return {
            "terms": None,
            "text": None,
            "checked": False,
            "why": f"{_NAMES[quantity]} could not be measured at every point",
        }
    if any(point.get("varies") for point in [*points, *([check] if check else [])]):
        return {
            "terms": None,
            "text": None,
            "checked": False,
            "why": "the counts vary between runs (layers chosen at random), so no formula holds",
        }
    xs = [Fraction(int(point["value"])) for point in points]
    ys = [Fraction(int(point[quantity])) for point in points]
    coefficients = fit(xs, ys)
    if coefficients is None:
        return {
            "terms": None,
            "text": None,
            "checked": False,
            "why": f"no polynomial of degree {MAX_DEGREE} or less in {symbol} goes through "
            f"every point (a stride or a pooling that does not divide {symbol} rounds it; "
            f"try values that are multiples of the model's total stride)",
        }
    terms = [
        [power, _fraction_text(coefficient)]
        for power, coefficient in reversed(list(enumerate(coefficients)))
    ]
    # `text` only for a formula that held on a point it was not fitted on: an unchecked one is
    # in `terms` and `why`, never shown as if it were the answer
    text = polynomial_text(coefficients, symbol)
    answer: dict[str, Any] = {"terms": terms, "text": text, "checked": True}
    if check is None:
        answer.update(
            text=None,
            checked=False,
            why=f"{text} goes through every point, but no point to check it on could be "
            f"counted ({check_error})",
        )
        return answer
    predicted = evaluate(coefficients, Fraction(int(check["value"])))
    if predicted != int(check[quantity]):
        answer.update(
            text=None,
            checked=False,
            why=f"the polynomial through the points predicts {_number(predicted)} at "
            f"{symbol}={int(check['value']):,}, where the count is {int(check[quantity]):,}: "
            f"the count is not one polynomial in {symbol} (a stride or a pooling that does not "
            f"divide {symbol} rounds it; try multiples of the model's total stride)",
        )
    return answer


_NAMES = {"macs": "MACs", "flops": "FLOPs", "activation_bytes": "activation memory"}


def fit(xs: list[Fraction], ys: list[Fraction]) -> list[Fraction] | None:
    """Coefficients (constant first) of the lowest-degree polynomial through the points that
    predicts every other point exactly; None when none of degree <= 4 does."""
    for degree in range(min(MAX_DEGREE, len(xs) - 1) + 1):
        coefficients = _interpolate(xs[: degree + 1], ys[: degree + 1])
        if all(evaluate(coefficients, x) == y for x, y in zip(xs, ys, strict=True)):
            return coefficients
    return None


def _interpolate(xs: list[Fraction], ys: list[Fraction]) -> list[Fraction]:
    """Newton's divided differences, expanded to plain coefficients; exact in Fractions."""
    count = len(xs)
    table = list(ys)
    for level in range(1, count):
        for index in range(count - 1, level - 1, -1):
            table[index] = (table[index] - table[index - 1]) / (xs[index] - xs[index - level])
    coefficients = [Fraction(0)] * count
    for index in range(count - 1, -1, -1):
        # coefficients = coefficients * (x - xs[index]) + table[index]
        shifted = [Fraction(0), *coefficients[:-1]]
        coefficients = [s - xs[index] * c for s, c in zip(shifted, coefficients, strict=True)]
        coefficients[0] += table[index]
    while len(coefficients) > 1 and coefficients[-1] == 0:
        coefficients.pop()
    return coefficients


def evaluate(coefficients: list[Fraction], x: Fraction) -> Fraction:
    total = Fraction(0)
    for coefficient in reversed(coefficients):
        total = total * x + coefficient
    return total


def _fraction_text(value: Fraction) -> str:
    return (
        str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    )


def _number(value: Fraction) -> str:
    if value.denominator == 1:
        return f"{value.numerator:,}"
    return f"{value.numerator:,}/{value.denominator:,}"


def polynomial_text(coefficients: list[Fraction], symbol: str) -> str:
    """`1,179,648 L^2 + 84,934,656 L`, `L^2/2 + 3 L + 7`, `0`."""
    parts: list[str] = []
    for power in range(len(coefficients) - 1, -1, -1):
        coefficient = coefficients[power]
        if coefficient == 0:
            continue
        sign = "-" if coefficient < 0 else "+"
        size = abs(coefficient)
        variable = "" if power == 0 else symbol if power == 1 else f"{symbol}^{power}"
        if not variable:
            body = _number(size)
        elif size == 1:
            body = variable
        elif size.denominator == 1:
            body = f"{_number(size)} {variable}"
        else:
            # L^2/2 reads better than 1/2 L^2; 3/4 L stays a fraction before the variable
            body = (
                f"{variable}/{size.denominator:,}"
                if size.numerator == 1
                else f"{_number(size)} {variable}"
            )
        parts.append(f"{sign} {body}" if parts else ("-" + body if sign == "-" else body))
    return " ".join(parts) if parts else "0"
