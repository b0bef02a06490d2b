"""Type and range rules for the fields of a frozen dataclass (Recipe, AugmentSpec), checked when one
is made: a value from `--recipe K=V`, `--augment K=V` or a stored config is held to the same rules
as the Click options, and a bad one is a CnnscopeError naming the field, the value and what it takes.

A table maps every field to one rule; `check_fields(obj, table, what)` checks them all and stores
the value in the field's own type (an int given for a float field becomes a float, a list a tuple).
"""
import dataclasses
import math
from dataclasses import dataclass

from cnnscope.errors import CnnscopeError


@dataclass(frozen=True)
class Number:
    """An int or a float in a range; `lo_open`/`hi_open` exclude the bound itself."""
    kind: type = float
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def convert(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if self.kind is int and not isinstance(value, int):
            return None
        value = self.kind(value)
        if not math.isfinite(value):
            return None
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return None
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            return None
        return value

    def describe(self) -> str:
        what = "a whole number" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None:
            return f"{what} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
        return what


@dataclass(frozen=True)
class Choice:
    options: tuple

    def convert(self, value):
        return value if isinstance(value, str) and value in self.options else None

    def describe(self) -> str:
        return f"one of {', '.join(self.options)}"


@dataclass(frozen=True)
class Flag:
    def convert(self, value):
        return value if isinstance(value, bool) else None

    def describe(self) -> str:
        return "True or False"


@dataclass(frozen=True)
class Numbers:
    """A tuple of numbers, each by `item`: `count` of them (any number when None), ascending when
    `ascending` (each >= the one before)."""
    item: Number
    count: int | None = None
    ascending: bool = False
    example: str = ""

    def convert(self, value):
        if not isinstance(value, (list, tuple)) or (self.count is not None and len(value) != self.count):
            return None
        items = tuple(self.item.convert(v) for v in value)
        if None in items or (self.ascending and list(items) != sorted(items)):
            return None
        return items

    def describe(self) -> str:
        size = f"{self.count} numbers" if self.count else "numbers"
        order = " in ascending order" if self.ascending else ""
        return f"a tuple of {size}{order}, each {self.item.describe()}, e.g. {self.example}"


def check_fields(obj, table: dict, what: str) -> None:
    """Check every field of the frozen dataclass `obj` by its rule in `table`; store the converted
    values. Fields without a rule (a nested dataclass) check themselves."""
    for f in dataclasses.fields(obj):
        rule = table.get(f.name)
        if rule is None:
            continue
        value = getattr(obj, f.name)
        converted = rule.convert(value)
        if converted is None:
            raise CnnscopeError(f"{what} {f.name}={value!r} is not allowed: {f.name} takes {rule.describe()}.")
        object.__setattr__(obj, f.name, converted)
