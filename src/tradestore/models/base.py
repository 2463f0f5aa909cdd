"""The validation every model shares: one base class, and the field types of this domain.

A model either validates whole or raises ``InvalidInputError`` naming each bad field, so a bad row
is refused before any store sees it. ``model_copy(update=...)`` and ``model_construct`` skip
validation, so each instance also records whether pydantic validated it (``was_validated``): a
store can re-check exactly the instances that need it, at no cost for the others.
"""

from __future__ import annotations

import functools
import gc
import inspect
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Self, TypeVar, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    model_validator,
    validate_call,
)
from pydantic import ValidationError as PydanticValidationError
from solders.pubkey import Pubkey
from solders.signature import Signature

from tradestore.errors import FieldProblem, InvalidInputError

U64_MAX = 2**64 - 1
I32_MAX = 2**31 - 1
BPS_MAX = 10_000
MONEY_DIGITS = 38
MONEY_DECIMALS = 18
MAX_JSON_BYTES = 64 * 1024
"""Ceiling of every free JSON field (token extensions, event data), as compact JSON: a stream
entry or a row stays small. Settings may lower it per store (``max_json_bytes``), not raise it."""


def _to_invalid_input(
    error: PydanticValidationError, model: str, parameters: Sequence[str] = ()
) -> InvalidInputError:
    """Each problem named by its field (or, for a call, its parameter: not its position)."""

    def where(loc: tuple[int | str, ...]) -> str:
        if parameters and loc and isinstance(loc[0], int):  # a positional argument of a call
            loc = (parameters[min(loc[0], len(parameters) - 1)], *loc[1:])
        return ".".join(str(part) for part in loc) or "(model)"

    problems = [
        FieldProblem(field=where(detail["loc"]), reason=detail["msg"])
        for detail in error.errors(include_url=False)
    ]
    return InvalidInputError(model, problems)


class TradestoreModel(BaseModel):
    """Immutable, strict about unknown fields, and raising tradestore's own error type."""

    __slots__ = ("_tradestore_validated",)
    """Outside the fields (no effect on equality, hashing or dumps), and left unset by
    ``model_copy``, ``model_construct``, ``copy`` and unpickling, which skip validation."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        use_enum_values=False,
        # A model given as a field of another is validated again, not taken as it is: else the
        # outer model's validation would mark an unvalidated inner one (model_construct) valid.
        revalidate_instances="always",
    )

    @model_validator(mode="after")
    def _mark_validated(self) -> Self:
        object.__setattr__(self, "_tradestore_validated", True)
        return self

    def __init__(self, /, **data: Any) -> None:  # noqa: ANN401
        try:
            super().__init__(**data)
        except PydanticValidationError as error:
            raise _to_invalid_input(error, type(self).__name__) from None

    @classmethod
    def model_validate(
        cls,
        obj: Any,  # noqa: ANN401
        *,
        strict: bool | None = None,
        extra: Any = None,  # noqa: ANN401
        from_attributes: bool | None = None,
        context: Any | None = None,  # noqa: ANN401
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        try:
            return super().model_validate(
                obj,
                strict=strict,
                extra=extra,
                from_attributes=from_attributes,
                context=context,
                by_alias=by_alias,
                by_name=by_name,
            )
        except PydanticValidationError as error:
            raise _to_invalid_input(error, cls.__name__) from None

    @classmethod
    def model_validate_json(
        cls,
        json_data: str | bytes | bytearray,
        *,
        strict: bool | None = None,
        extra: Any = None,  # noqa: ANN401
        context: Any | None = None,  # noqa: ANN401
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        try:
            return super().model_validate_json(
                json_data,
                strict=strict,
                extra=extra,
                context=context,
                by_alias=by_alias,
                by_name=by_name,
            )
        except PydanticValidationError as error:
            raise _to_invalid_input(error, cls.__name__) from None


_VALIDATED = operator.attrgetter("_tradestore_validated")
_new = object.__new__
# The slots of every pydantic model, set through their descriptors: no attribute lookup per row.
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
M = TypeVar("M", bound=TradestoreModel)
_ALL_FIELDS: dict[type[TradestoreModel], set[str]] = {}


def unchecked(cls: type[M], fields: dict[str, Any]) -> M:
    """A model built without validation, in a fifth of ``model_construct``'s time (0.9 against
    4.5 µs for a ``Trade``), for the two hot paths that check rows another way:

    - rows the stores read back from tradestore's own tables: validated on their way in, and
      the tables' constraints hold them there, so checking each again costs more than the query
      (issue 13);
    - rows a producer hands to the time series writer, which checks every unvalidated row column
      by column before it accepts any (``timeseries.columns``).

    ``fields`` must hold every field, already in the validated form (enums, aware UTC instants)
    and becomes the instance's ``__dict__`` as it is. The instance is not marked validated, so a
    store that is handed it checks it like any other input.
    """
    model = _new(cls)
    _set_dict(model, fields)
    # One set per class, shared: frozen models never add to it and pydantic copies it first.
    _set_fields_set(model, _ALL_FIELDS.get(cls) or _all_fields(cls))
    _set_extra(model, None)
    _set_private(model, None)
    return model


def _all_fields(cls: type[TradestoreModel]) -> set[str]:
    return _ALL_FIELDS.setdefault(cls, set(cls.model_fields))


class collections_deferred:  # lower case: read as a call, `with collections_deferred():`
    """No garbage collection while stored rows become models: for a synchronous build only.

    Everything a build makes stays alive until it ends, so a collection during it frees none of
    it and only moves it to older generations, whose growth then brings a full collection of the
    whole heap (85-110 ms of CPU over the 200,000 objects of bench_reads' process): the tail of
    ``last_trades`` (issue 13). Deferred, a collection comes at the next allocation after the
    build; by then the caller may have dropped the result, and a young collection costs what it
    would have. (A class, not a generator: leaving a generator's ``with`` allocates the
    StopIteration that would trigger the deferred collection at once, the result still alive.)

    Safe because: the build never awaits (no other task runs inside it); an exception leaves
    the collector as it found it; an application that turned the collector off, or an outer
    deferral, finds it still off. Not covered: another thread that turns the collector off
    during a build's millisecond would see it turned back on.
    """

    __slots__ = ("_resume",)

    def __enter__(self) -> None:
        self._resume = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        if self._resume:
            gc.enable()


def was_validated(model: TradestoreModel) -> bool:
    """True when pydantic validated this very instance, False for one built without validation."""
    return getattr(model, "_tradestore_validated", False)


def all_validated(models: Iterable[TradestoreModel]) -> bool:
    """``was_validated`` of every model, at C speed (no Python call per model)."""
    try:
        return all(map(_VALIDATED, models))
    except AttributeError:  # the mark is unset on an instance built without validation
        return False


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware; naive datetimes are ambiguous")
    return value.astimezone(UTC)


def _solana_address(value: str) -> str:
    try:
        return str(Pubkey.from_string(value))
    except ValueError as error:
        raise ValueError(f"not a Solana address (base58 of 32 bytes): {error}") from None


def _transaction_signature(value: str) -> str:
    try:
        return str(Signature.from_string(value))
    except ValueError as error:
        raise ValueError(f"not a transaction signature (base58 of 64 bytes): {error}") from None


def compact_json(value: object) -> str:
    """JSON as the stores write it: no spaces, ASCII only, no NaN (ValueError)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _bounded(value: object, limit: int) -> tuple[str, str | None]:
    """The compact JSON of a value, and why it is refused (None when it is not)."""
    try:
        encoded = compact_json(value)
    except (ValueError, TypeError, RecursionError) as error:
        return "", f"not JSON: {error}"
    if len(encoded) > limit:
        return encoded, f"{len(encoded)} bytes of compact JSON, more than {limit}"
    return encoded, None


def bounded_json(value: object, *, limit: int, model: str, field: str) -> str:
    """The compact JSON of a value a store is about to write, refused when over ``limit``.

    Stores check again what the model checked: ``model_copy(update=...)`` skips validation, and
    a store's settings may set a lower bound than the model's.
    """
    encoded, problem = _bounded(value, limit)
    if problem is not None:
        raise InvalidInputError(model, [FieldProblem(field, problem)])
    return encoded


def _within_json_bound(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    _, problem = _bounded(value, MAX_JSON_BYTES)
    if problem is not None:
        raise ValueError(problem)
    return value


JsonObject = Annotated[dict[str, JsonValue], AfterValidator(_within_json_bound)]
"""Free JSON keyed by name, at most ``MAX_JSON_BYTES`` of compact JSON."""

F = TypeVar("F", bound=Callable[..., Any])


def _revalidated(value: object) -> object:
    """A model argument checked again: ``model_copy(update=...)`` builds one without checks."""
    if isinstance(value, TradestoreModel):
        return type(value).model_validate(dict(value))
    return value


def validate_arguments(function: F) -> F:
    """Check a public call's arguments against its annotations before it runs, as leniently as
    the models do; a bad one raises InvalidInputError naming it, so no driver sees it. A model
    passed as an argument is validated again, however it was built (not the items of a sequence:
    the stores check those as they encode them)."""

    @functools.wraps(function)
    def with_models_checked(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        return function(
            *map(_revalidated, args), **{name: _revalidated(v) for name, v in kwargs.items()}
        )

    checked = validate_call(with_models_checked)
    where = function.__qualname__
    parameters = [  # by position; arguments past the last go to *args, if any
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY
        and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def checked_coroutine(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            try:
                return await checked(*args, **kwargs)
            except PydanticValidationError as error:
                raise _to_invalid_input(error, where, parameters) from None

        return cast(F, checked_coroutine)

    @functools.wraps(function)
    def checked_function(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        try:
            return checked(*args, **kwargs)
        except PydanticValidationError as error:
            raise _to_invalid_input(error, where, parameters) from None

    return cast(F, checked_function)


def utc_now() -> datetime:
    return datetime.now(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]
"""An instant; naive datetimes are refused, aware ones are converted to UTC."""

SolanaAddress = Annotated[
    str, StringConstraints(min_length=32, max_length=44), AfterValidator(_solana_address)
]
"""A public key (mint, wallet, pool) as base58 of exactly 32 bytes."""

TxSignature = Annotated[
    str, StringConstraints(min_length=64, max_length=88), AfterValidator(_transaction_signature)
]
"""A transaction signature as base58 of exactly 64 bytes."""

Lamports = Annotated[int, Field(ge=0, le=U64_MAX)]
"""A fee in lamports: an unsigned 64-bit integer on chain."""

Money = Annotated[Decimal, Field(ge=0, max_digits=MONEY_DIGITS, decimal_places=MONEY_DECIMALS)]
"""A non-negative exact amount; 18 decimal places keep every lamport (SOL has 9)."""

PositiveMoney = Annotated[
    Decimal, Field(gt=0, max_digits=MONEY_DIGITS, decimal_places=MONEY_DECIMALS)
]

SignedMoney = Annotated[Decimal, Field(max_digits=MONEY_DIGITS, decimal_places=MONEY_DECIMALS)]
"""An exact amount that may be negative, such as a profit or loss."""

BasisPoints = Annotated[int, Field(ge=0, le=BPS_MAX)]
Milliseconds = Annotated[int, Field(ge=0, le=I32_MAX)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

Text = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
]
"""Human text for names: bounded, no control characters."""

TokenSymbol = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=20, pattern=r"^[^\x00-\x1f\x7f\s]+$"
    ),
]
"""A ticker such as SOL; not unique on Solana, so never an identity."""

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_.:\-]*$")
]
"""A machine name: metric names, event types, label keys."""


class TradingMode(StrEnum):
    PAPER = "paper"
    LIVE = "live"


class TradeAction(StrEnum):
    BUY = "buy"
    SELL = "sell"
    SWAP = "swap"


class RuleType(StrEnum):
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
