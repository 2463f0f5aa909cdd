"""The writer's check of a run of rows built without validation, column by column at C speed.

``model_construct`` or ``models.unchecked`` builds a row in far less time than validation takes
(``unchecked``: a tenth), and the writer must
check every row it accepts however it was built (``rows.check``): validating each such row costs
more than building it validated. Here the rows of one model are checked a column at a time, with
``map``/``min``/``max``/``set`` over the column instead of a Python call per value.

The check accepts only a run whose every value is already in the form validation would leave it
in (exact types, canonical addresses and signatures, UTC instants, decimals within their digits)
and inside its field's bounds: such a row is exactly what validating it would have produced. It
is made from the models' own field declarations, and refuses at import a constraint it does not
know, so a model that changes cannot silently outgrow it. Anything else (a subclass, a value to
convert, a bound crossed, a model validator it does not know) fails the run, and the writer then
validates row by row, which names the problem: as strict as before, only cheaper when all is well.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import types
import typing
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import annotated_types
from pydantic import AfterValidator, StringConstraints
from pydantic.fields import FieldInfo

from tradestore.models.base import (
    MONEY_DECIMALS,
    MONEY_DIGITS,
    TradestoreModel,
    _require_utc,
    _solana_address,
    _transaction_signature,
)
from tradestore.models.timeseries import MevEvent, Position, Trade

Column = list[Any]
ColumnCheck = Callable[[Column], bool]
_KNOWN_ADDRESSES = 4096
"""Distinct addresses remembered as canonical (mints, traders' tokens: a few hundred)."""


def _exactly(kind: type) -> ColumnCheck:
    """Every value of exactly this type (a subclass, a bool for an int, would be converted)."""
    return lambda column: set(map(type, column)) == {kind}


@functools.lru_cache(maxsize=_KNOWN_ADDRESSES)
def _canonical_address(value: str) -> bool:
    try:
        return _solana_address(value) == value
    except ValueError:
        return False


def _canonical_signature(value: str) -> bool:
    try:
        return _transaction_signature(value) == value
    except ValueError:
        return False


def _bounds(metadata: Sequence[object]) -> tuple[Any, bool, Any]:
    """(lower bound, whether it is strict, upper bound) from annotated-types metadata."""
    lower: Any = None
    strict = False
    upper: Any = None
    for item in metadata:
        if isinstance(item, annotated_types.Gt):
            lower, strict = item.gt, True
        elif isinstance(item, annotated_types.Ge):
            lower = item.ge
        elif isinstance(item, annotated_types.Le):
            upper = item.le
    return lower, strict, upper


def _within(column: Column, lower: Any, strict: bool, upper: Any) -> bool:  # noqa: ANN401
    if lower is not None:
        least = min(column)
        if least < lower or (strict and least == lower):
            return False
    return upper is None or max(column) <= upper


def _decimal_digits_fit(column: Column) -> bool:
    """Finite, at most ``MONEY_DECIMALS`` places, at most ``MONEY_DIGITS`` digits with at most
    ``MONEY_DIGITS - MONEY_DECIMALS`` before the point, counted without normalising (stricter
    than pydantic, which strips trailing zeros first: such a value goes row by row)."""
    if not all(map(Decimal.is_finite, column)):
        return False
    shapes = list(map(Decimal.as_tuple, column))
    exponents: list[int] = list(map(operator.attrgetter("exponent"), shapes))
    if min(exponents) < -MONEY_DECIMALS or max(exponents) > 0:
        return False
    lengths = map(len, map(operator.attrgetter("digits"), shapes))
    whole: int = max(map(operator.add, lengths, exponents))
    return whole <= MONEY_DIGITS - MONEY_DECIMALS


def _all_of(*checks: ColumnCheck) -> ColumnCheck:
    return lambda column: all(check(column) for check in checks)


_KNOWN_METADATA = (
    AfterValidator,
    StringConstraints,
    annotated_types.Gt,
    annotated_types.Ge,
    annotated_types.Le,
)
_CANONICAL: dict[object, Callable[[str], bool]] = {
    _solana_address: _canonical_address,
    _transaction_signature: _canonical_signature,
}


def _check_of(annotation: Any, metadata: Sequence[object], where: str) -> ColumnCheck:  # noqa: ANN401
    """The column check of one field; TypeError for a declaration it does not know."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *more = typing.get_args(annotation)
        return _check_of(base, [*metadata, *more], where)
    if typing.get_origin(annotation) in {typing.Union, types.UnionType}:
        options = [option for option in typing.get_args(annotation) if option is not type(None)]
        if len(options) != 1 or metadata:
            raise TypeError(f"{where}: no column check for {annotation}")
        return _optional(_check_of(options[0], [], where))
    digits = [item for item in metadata if getattr(item, "max_digits", None) is not None]
    unknown = [
        item for item in metadata if not isinstance(item, _KNOWN_METADATA) and item not in digits
    ]
    if unknown:
        raise TypeError(f"{where}: no column check for {unknown}")
    check = _scalar_check(annotation, metadata, digits)
    if check is None:
        raise TypeError(f"{where}: no column check for {annotation} {metadata}")
    return check


def _optional(inner: ColumnCheck) -> ColumnCheck:
    def check(column: Column) -> bool:
        present = [value for value in column if value is not None]
        return not present or inner(present)

    return check


def _scalar_check(  # noqa: PLR0911 - one return per kind of field
    annotation: Any,  # noqa: ANN401
    metadata: Sequence[object],
    digits: Sequence[object],
) -> ColumnCheck | None:
    validators = [item.func for item in metadata if isinstance(item, AfterValidator)]
    strings = [item for item in metadata if isinstance(item, StringConstraints)]
    lower, strict, upper = _bounds(metadata)

    def bounded(column: Column) -> bool:
        return _within(column, lower, strict, upper)

    if annotation is Decimal and not validators and not strings:
        money = [
            (getattr(item, "max_digits", 0), getattr(item, "decimal_places", 0)) for item in digits
        ]
        if money != [(MONEY_DIGITS, MONEY_DECIMALS)]:
            return None
        # Distinct values only: a run's rows often share a price, a zero fee.
        return _distinct(_all_of(_exactly(Decimal), _decimal_digits_fit, bounded))
    if annotation in {int, float} and not (validators or strings or digits):
        if annotation is float:
            return _all_of(_exactly(float), _finite, bounded)
        return _all_of(_exactly(int), bounded)
    if annotation is datetime and validators == [_require_utc] and len(metadata) == 1:
        return _all_of(_exactly(datetime), _utc)
    if annotation is str and len(strings) == 1 and len(metadata) == 2 and len(validators) == 1:
        each, limits = _CANONICAL.get(validators[0]), strings[0]
        if each is None or limits.pattern is not None or limits.strip_whitespace is not None:
            return None

        def lengths(column: Column) -> bool:
            return _within(list(map(len, column)), limits.min_length, False, limits.max_length)

        return _all_of(_exactly(str), lengths, lambda column: all(map(each, set(column))))
    if metadata:
        return None
    if annotation is UUID:  # a subclass (asyncpg's) is kept as it is by validation too
        return _instances(UUID)
    if annotation is bool or (isinstance(annotation, type) and issubclass(annotation, Enum)):
        return _exactly(annotation)
    return None


def _instances(kind: type) -> ColumnCheck:
    return lambda column: all(map(isinstance, column, itertools.repeat(kind)))


def _distinct(check: ColumnCheck) -> ColumnCheck:
    return lambda column: check(list(set(column)))


def _finite(column: Column) -> bool:
    return all(map(math.isfinite, column))


def _utc(column: Column) -> bool:
    return set(map(operator.attrgetter("tzinfo"), column)) == {UTC}


def _distinct_tokens(columns: dict[str, Column]) -> bool:
    return not any(map(operator.eq, columns["base_token"], columns["quote_token"]))


MODEL_CHECKS: dict[str, Callable[[dict[str, Column]], bool]] = {
    "_mark_validated": lambda _: True,
    "_distinct_tokens": _distinct_tokens,
}
"""Model validators by name, as checks over the columns; a model with another has no fast path."""


ModelCheck = Callable[[dict[str, Column]], bool]
Plan = tuple[dict[str, ColumnCheck], list[ModelCheck]]
"""A model's column checks by field, and its model validators' checks."""


def _plan(model: type[TradestoreModel]) -> Plan | None:
    fields: dict[str, FieldInfo] = model.model_fields
    checks = {
        name: _check_of(info.annotation, info.metadata, f"{model.__name__}.{name}")
        for name, info in fields.items()
    }
    validators = list(model.__pydantic_decorators__.model_validators)
    if model.__pydantic_decorators__.field_validators or not set(validators) <= MODEL_CHECKS.keys():
        return None
    return checks, [MODEL_CHECKS[name] for name in validators]


_PLANS: dict[type[TradestoreModel], Plan | None] = {
    model: _plan(model) for model in (Trade, Position, MevEvent)
}
"""Metric rows (free-form labels) are checked row by row: they are few."""
_DICT = operator.attrgetter("__dict__")


def in_form(rows: Sequence[TradestoreModel]) -> bool:
    """Whether every row of this run of one model is exactly what validating it would give.
    False (never an exception) when it cannot tell: the caller then validates row by row."""
    plan = _PLANS.get(type(rows[0]))
    if plan is None:
        return False
    checks, model_checks = plan
    try:
        dicts = list(map(_DICT, rows))
        if set(map(len, dicts)) != {len(checks)}:  # with every field present: no other
            return False
        columns = {name: list(map(operator.itemgetter(name), dicts)) for name in checks}
        return all(check(columns[name]) for name, check in checks.items()) and all(
            check(columns) for check in model_checks
        )
    except (KeyError, TypeError, AttributeError, ValueError):
        return False
