"""`Section`, the base of every config section: a strict pydantic model whose errors are one-line
`ConfigError`s naming the dotted key (`train.epochs='many': expected int`), never pydantic's report.

`pipelines.data.config.DataConfig` and the sections of `pipelines.config` derive from it.
"""

from __future__ import annotations

import inspect
import itertools
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Self, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from vae.config import ConfigError


class Section(BaseModel):
    """A config section: unknown keys, wrong types and invalid values are one-line `ConfigError`s.

    Types are strict (no "3" -> 3, no 1 -> True; an int is a float), floats finite, unknown keys
    refused. Built by keyword, by `from_dict` or field by field (assignments are validated too), it
    raises `ConfigError` naming the dotted key, never pydantic's `ValidationError`; value checks
    (the subclasses' after-validators) raise their own `ConfigError`s, kept as they are.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        validate_assignment=True,
        json_schema_extra=lambda schema, cls: describe_fields(schema, cls.__doc__ or ""),
    )
    #: Dotted key of the section in the whole config ("train"): the prefix of its messages.
    section: ClassVar[str] = ""
    #: The fix a message names when a field's value is out of its bounds, where the bounds alone
    #: ("must be >= 1") would not say enough.
    fixes: ClassVar[dict[str, str]] = {}

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise config_error(exc, type(self)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise config_error(exc, type(self)) from None

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Build from a (nested) mapping, e.g. YAML or JSON: missing keys keep their defaults.

        Raises:
            ConfigError: unknown key, wrong type or invalid value (the message names the key).
        """
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(exc, cls) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists; storage options may hold credentials: see redaction)."""
        return self.model_dump(mode="json")


def describe_fields(schema: dict[str, Any], doc: str) -> None:
    """Fill in a JSON schema from the Google-style docstring `doc` of its class: the first paragraph
    describes the section, each "Args:" entry its field (the help text of Prefect's UI form)."""
    lines = inspect.cleandoc(doc).splitlines()
    schema["description"] = " ".join(itertools.takewhile(str.strip, lines))
    fields: dict[str, list[str]] = {}
    body = itertools.dropwhile(lambda line: line != "Args:", lines)
    for line in itertools.takewhile(lambda line: not line or line.startswith(" "), list(body)[1:]):
        entry = _ARG.match(line)
        if entry:
            fields[entry["name"]] = [entry["text"]]
        elif fields and line.strip():
            fields[list(fields)[-1]].append(line.strip())
    for name, text in fields.items():
        if name in schema.get("properties", {}):
            schema["properties"][name].setdefault("description", " ".join(text))


#: One "Args:" entry of a docstring: `    name: text`.
_ARG = re.compile(r"^    (?P<name>\w+): (?P<text>.*)$")


def unknown_keys_error(where: str, unknown: list[str], valid: list[str]) -> ConfigError:
    """The refusal of unknown keys under the section `where` ("" for the top level)."""
    dotted = [f"{where}.{key}" if where else str(key) for key in unknown]
    return ConfigError(
        f"unknown config key(s) {dotted}: valid keys under '{where or '<top level>'}' are {valid}"
    )


def config_error(exc: ValidationError, root: type[Section]) -> ConfigError:
    """One `ConfigError` line for pydantic's first error in validating `root`.

    A validator's own `ConfigError` is returned as raised; unknown keys name every unknown key of the
    same section and the valid ones; any other error reads `dotted.key=value: fix`.
    """
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    first = unknown[0] if unknown else errors[0]
    own = (first.get("ctx") or {}).get("error")
    if isinstance(own, ConfigError):
        return own
    where = _locate(root, first["loc"])
    if unknown:
        parent = first["loc"][:-1]
        names = sorted(str(e["loc"][-1]) for e in unknown if e["loc"][:-1] == parent)
        return unknown_keys_error(where.key, names, list(getattr(where.annotation, "model_fields", {})))
    if first["type"] in ("model_type", "model_attributes_type"):
        return ConfigError(f"{where.key}: expected a mapping of settings, got {first['input']!r}")
    return ConfigError(f"{where.key}={first['input']!r}: {own or _fix(first, where)}")


@dataclass
class _Setting:
    """Where one of pydantic's errors lies.

    Attributes:
        key: its dotted key ("train.epochs", "generate.per_class.7").
        annotation: the type there (a section's class for errors of a whole section).
        owner: the section class holding the field, None at the top.
        field: the field's name in `owner`.
    """

    key: str
    annotation: Any
    owner: Any = None
    field: str = ""


def _locate(root: type[Section], loc: tuple[int | str, ...]) -> _Setting:
    """The setting at pydantic's `loc`: its fields and mapping keys, without the union members pydantic
    adds ("int", "str") nor what lies below a setting."""
    names = [root.section] if root.section else []
    where = _Setting("", root)
    for item in loc:
        fields = getattr(where.annotation, "model_fields", None)
        if fields is not None and item in fields:
            where = _Setting("", fields[item].annotation, where.annotation, str(item))
        elif get_origin(where.annotation) is dict:
            value_type = get_args(where.annotation)[1]
            where.annotation = get_args(value_type)[0] if get_origin(value_type) is Annotated else value_type
        else:
            break
        names.append(str(item))
    where.key = ".".join(names)
    return where


def _fix(error: ErrorDetails, where: _Setting) -> str:
    """What to give instead, for one of pydantic's errors at `where`: the section's own words for the
    field (its `fixes`), else what the type or the field's bounds say."""
    kind = error["type"]
    if kind == "finite_number":
        return "give a finite number (not inf or nan)"
    if kind == "literal_error":
        return f"use one of {list(get_args(where.annotation))}"
    if kind == "dict_type":
        return "expected a mapping"
    if kind.endswith("_type"):
        name = getattr(where.annotation, "__name__", None) or str(where.annotation).replace("typing.", "")
        return f"expected {name}"
    fixes = getattr(where.owner, "fixes", {})
    if where.field in fixes:
        return fixes[where.field]
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return _bounds(where.owner.model_fields[where.field].metadata)
    return error["msg"]


def _bounds(metadata: list[Any]) -> str:
    """A field's bounds in words: "must be >= 1", "must be in 0..9" (ints), "must be in (0, 1)"."""
    b = {name: getattr(m, name) for m in metadata for name in ("ge", "gt", "le", "lt") if hasattr(m, name)}
    low = ("[", b["ge"]) if "ge" in b else ("(", b["gt"])
    high = ("]", b["le"]) if "le" in b else (")", b["lt"]) if "lt" in b else None
    if high is None:
        return f"must be {'>=' if low[0] == '[' else '>'} {low[1]}"
    if low[0] + high[0] == "[]" and isinstance(low[1], int) and isinstance(high[1], int):
        return f"must be in {low[1]:_}..{high[1]:_}"
    return f"must be in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"


def str_keys(value: Any) -> Any:
    """A mapping's keys as strings (YAML reads `per_class: {3: 5}` with an int key); anything else as is."""
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


#: fsspec options: a mapping with string keys, any values.
StorageOptions = Annotated[dict[str, Any], BeforeValidator(str_keys)]


__all__ = ["Section", "StorageOptions", "config_error", "describe_fields", "str_keys", "unknown_keys_error"]
