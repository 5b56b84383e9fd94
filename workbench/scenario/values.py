"""Value types of the scenario file's schema (workbench/scenario/schema.py): integers and
finite numbers in a range, texts, choices, distinct lists. Each is a pydantic type whose
JSON Schema says the same as its check, and whose error speaks to the person writing the
file. A problem found past pydantic's own type checks is raised with `problem()`: a
PydanticCustomError whose context holds the words and, where the problem lies in a part of
the value, `at`: the keys or indices of that part below the error's location
(workbench/scenario/read.py adds them to the field it names).
"""

import difflib
from typing import Annotated, Any

from pydantic import AfterValidator, FiniteFloat, WithJsonSchema
from pydantic_core import PydanticCustomError

from bagel.errors import InputError
from bagel.tokenizer import check_text
from workbench.params import MAX_SEED, MAX_TEXT_CHARS, check_text_length


def problem(message: str, *at: str | int) -> PydanticCustomError:
    """A validation error with these words, about the part `at` of the value checked."""
    return PydanticCustomError("scenario", "{message}", {"message": message, "at": at})


def suggest(word: object, known: tuple[str, ...]) -> str:
    """'did you mean ...? expected one of ...' for a value not among `known`."""
    close = difflib.get_close_matches(str(word), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}expected one of {', '.join(known)}"


def _bound(value: float) -> str:
    return "2**63-1" if value == MAX_SEED else f"{value:g}"


def integer(low: int, high: int | None = None) -> Any:
    """An integer from low to high (no bool: strict)."""

    def check(value: int) -> int:
        if value < low or (high is not None and value > high):
            within = f"between {low} and {_bound(high)}" if high is not None else f">= {low}"
            raise problem(f"must be an integer {within}, got {value}")
        return value

    schema = {"type": "integer", "minimum": low} | ({} if high is None else {"maximum": high})
    return Annotated[int, AfterValidator(check), WithJsonSchema(schema)]


def number(low: float | None = None, high: float | None = None, above: float | None = None) -> Any:
    """A finite number (an integer is taken as one), from low to high or above `above`."""

    def check(value: float) -> float:
        if low is not None and high is not None and not low <= value <= high:
            raise problem(f"must be between {low:g} and {high:g}, got {value:g}")
        if low is not None and high is None and value < low:
            raise problem(f"must be >= {low:g}, got {value:g}")
        if above is not None and not value > above:
            raise problem(f"must be > {above:g}, got {value:g}")
        return float(value)

    schema: dict[str, Any] = {"type": "number"}
    schema |= {} if low is None else {"minimum": low}
    schema |= {} if high is None else {"maximum": high}
    schema |= {} if above is None else {"exclusiveMinimum": above}
    return Annotated[FiniteFloat, AfterValidator(check), WithJsonSchema(schema)]


def _preview(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{len(text)} characters of white space"


def _text(blank_ok: bool) -> Any:
    def check(value: str) -> str:
        try:
            check_text_length(value, "the text")
            check_text(value, "the text")
        except InputError as err:
            raise problem(str(err)) from None
        if not blank_ok and not value.strip():
            raise problem(f"must hold a non-space character, got {_preview(value)}")
        return value

    schema = {"type": "string", "maxLength": MAX_TEXT_CHARS} | (
        {} if blank_ok else {"pattern": r"\S"}
    )
    return Annotated[str, AfterValidator(check), WithJsonSchema(schema)]


Text = _text(blank_ok=False)  # a text that says something: instructions, goals, names, paths
Prompt = _text(blank_ok=True)  # a generation prompt: blank asks for an unconditional image


def choice(values: tuple[str, ...], noun: str = "value") -> Any:
    """One of `values`; anything else is named with the closest of them."""

    def check(value: str) -> str:
        if value not in values:
            raise problem(f"unknown {noun} {value!r}; {suggest(value, values)}")
        return value

    return Annotated[str, AfterValidator(check), WithJsonSchema({"enum": list(values)})]


def distinct(values: list) -> list:
    for i, value in enumerate(values):
        if value in values[:i]:
            raise problem(f"{value!r} is listed twice", i)
    return values


def what(value: Any) -> str:
    """A value as an error message shows it (a long one cut short)."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "null"
    shown = repr(value)
    if len(shown) > 60:
        shown = f"{shown[:40]}... ({len(shown)} characters)"
    return f"{shown} ({type(value).__name__})"
