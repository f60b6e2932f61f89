"""Pydantic's validation errors, said in the API's words.

Pydantic writes a union's member names into error paths
(`answers.dict[str,nullable[AnswerInput]].facility_type`), reports the failed `None`
alternative of every optional field ("Input should be None"), and quotes regular
expressions. A client wrote `answers.facility_type.value`: this module walks each path
along the body's validation schema, keeps the segments the client wrote (field aliases,
dict keys, list indexes) and drops the member names, then words the message plainly.
"""

from __future__ import annotations

import email.message
import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import CoreSchema

from autopilot_api.core.errors import field_error
from autopilot_api.schemas.common import PATTERN_HINTS

Loc = list[str | int]
_OBJECT_EXPECTED = {"model_attributes_type", "model_type", "dict_type"}
_PLAIN_MESSAGES = {
    "model_attributes_type": "Input should be a JSON object",
    "model_type": "Input should be a JSON object",
    "dict_type": "Input should be a JSON object",
    "list_type": "Input should be a JSON array",
    "extra_forbidden": "Unknown field: this request has no field of that name (see /docs)",
    "missing": "Field required",
}
_SEQUENCES = {"list", "set", "frozenset", "generator"}


def is_json_content_type(content_type: str | None) -> bool:
    """What FastAPI parses as JSON: application/json or application/*+json."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


@dataclass(frozen=True)
class BodySchema:
    """A route body's validation schema and every schema a `definition-ref` in it names."""

    schema: CoreSchema
    definitions: Mapping[str, Any]


@functools.lru_cache(maxsize=256)
def body_schema(annotation: Any) -> BodySchema | None:
    """Built once per body type."""
    try:
        schema = TypeAdapter(annotation).core_schema
    except Exception:  # noqa: BLE001 - a message nicety must never turn a 422 into a 500
        return None
    return BodySchema(schema, dict(_definitions(schema)))


def describe(
    errors: Sequence[Mapping[str, Any]],
    *,
    body: BodySchema | None,
    content_type: str | None,
) -> list[dict[str, Any]]:
    """The `details` of a 422: one entry per field, in the client's words."""
    cleaned: list[tuple[Loc, str, str, bool]] = []
    for error in errors:
        loc, from_union = _client_loc(error, body)
        message, error_type = _message(error, loc, content_type)
        cleaned.append((loc, message, error_type, from_union))

    # The `None` alternative of an optional field failing says nothing: the client did not
    # send null (that alternative would have matched), so the other member's error is the one.
    if any(error_type != "none_required" for _, _, error_type, _ in cleaned):
        cleaned = [entry for entry in cleaned if entry[2] != "none_required"]

    merged: dict[tuple[str | int, ...], list[tuple[str, str, bool]]] = {}
    for loc, message, error_type, from_union in cleaned:
        merged.setdefault(tuple(loc), []).append((message, error_type, from_union))
    details = []
    for key, entries in merged.items():
        if len(entries) > 1 and all(from_union for _, _, from_union in entries):
            # Every member of a union refused the value: one entry naming what it may be.
            types = {error_type for _, error_type, _ in entries}
            message = _either([message for message, _, _ in entries])
            details.append(
                field_error(list(key), message, types.pop() if len(types) == 1 else "wrong_type")
            )
            continue
        seen: set[tuple[str, str]] = set()
        for message, error_type, _ in entries:
            if (message, error_type) not in seen:
                seen.add((message, error_type))
                details.append(field_error(list(key), message, error_type))
    return details


def _client_loc(error: Mapping[str, Any], body: BodySchema | None) -> tuple[Loc, bool]:
    loc: Loc = list(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        return ["body"], False  # FastAPI appends the character position
    if not loc:
        return loc, False
    where, rest = loc[0], loc[1:]
    if where == "body" and body is not None:
        walked = _walk(body.schema, rest, body.definitions)
        if walked is not None:
            return ["body", *walked[0]], walked[1]
    if where == "header" and rest:
        return ["header", _header_name(str(rest[0]))], False
    return loc, False


def _header_name(name: str) -> str:
    """ASGI lowercases header names: give back the usual spelling (`if-match` → `If-Match`)."""
    if name != name.lower():
        return name  # declared with an alias, spelled as documented
    return "-".join(part.capitalize() for part in name.split("-"))


def _walk(schema: Any, loc: Loc, definitions: Mapping[str, Any]) -> tuple[Loc, bool] | None:
    """`loc` without union member names, and whether one was dropped; None when `loc`
    cannot be a path through `schema` (used to find which member of a union it went into)."""
    kind = schema.get("type")
    if kind == "definition-ref":
        target = definitions.get(schema.get("schema_ref", ""))
        return None if target is None else _walk(target, loc, definitions)
    if kind == "union":
        if not loc:
            return [], False
        for choice in schema.get("choices", ()):
            member = choice[0] if isinstance(choice, tuple) else choice
            found = _walk(member, loc[1:], definitions)
            if found is not None:
                return found[0], True
        return None
    if kind == "tagged-union":
        if not loc:
            return [], False
        member = schema.get("choices", {}).get(loc[0])
        found = None if member is None else _walk(member, loc[1:], definitions)
        return None if found is None else (found[0], True)
    if kind in ("model-fields", "typed-dict"):
        return _walk_fields(schema.get("fields", {}), loc, definitions)
    if kind == "dict":
        if not loc:
            return [], False
        if loc[1:] == ["[key]"]:
            return loc[:1], False
        found = _walk(schema.get("values_schema", {"type": "any"}), loc[1:], definitions)
        return None if found is None else ([loc[0], *found[0]], found[1])
    if kind in _SEQUENCES or kind == "tuple":
        if not loc:
            return [], False
        if not isinstance(loc[0], int):
            return None
        items = schema.get("items_schema", {"type": "any"})
        if isinstance(items, list):
            items = items[min(loc[0], len(items) - 1)] if items else {"type": "any"}
        found = _walk(items, loc[1:], definitions)
        return None if found is None else ([loc[0], *found[0]], found[1])
    inner = [
        schema[key]
        for key in ("schema", "python_schema", "strict_schema", "lax_schema")
        if isinstance(schema.get(key), dict)
    ]
    inner += list(schema.get("steps", ()))
    for candidate in inner:
        found = _walk(candidate, loc, definitions)
        if found is not None:
            return found
    if inner:
        return None
    return ([], False) if not loc else None


def _walk_fields(
    fields: Mapping[str, Any], loc: Loc, definitions: Mapping[str, Any]
) -> tuple[Loc, bool] | None:
    if not loc:
        return [], False
    for name, field in fields.items():
        if loc[0] in (name, field.get("validation_alias")):
            found = _walk(field.get("schema", {"type": "any"}), loc[1:], definitions)
            return None if found is None else ([loc[0], *found[0]], found[1])
    # A field the model does not have (extra_forbidden): the client's own name.
    return (loc[:1], False) if len(loc) == 1 else None


def _definitions(schema: Any) -> Iterator[tuple[str, Any]]:
    """Every schema a `definition-ref` can point at."""
    if isinstance(schema, dict):
        if isinstance(schema.get("ref"), str):
            yield schema["ref"], schema
        for value in schema.values():
            yield from _definitions(value)
    elif isinstance(schema, list | tuple):
        for value in schema:
            yield from _definitions(value)


def _message(error: Mapping[str, Any], loc: Loc, content_type: str | None) -> tuple[str, str]:
    error_type = str(error.get("type", ""))
    message = str(error.get("msg", ""))
    ctx = error.get("ctx") or {}
    if error_type == "json_invalid":
        problem = ctx.get("error", "syntax error")
        position = error.get("loc", ())[-1]
        return f"The body is not valid JSON: {problem} (at character {position})", error_type
    if (
        loc == ["body"]
        and error_type in _OBJECT_EXPECTED
        and not is_json_content_type(content_type)
    ):
        said = (
            "the request had no Content-Type"
            if not content_type
            else "its Content-Type is not JSON"
        )
        return (
            f"The body must be JSON sent with Content-Type: application/json ({said})",
            "content_type",
        )
    if loc == ["body"] and error_type == "missing":
        return "The request needs a JSON body", error_type
    if error_type == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(str(ctx.get("pattern", "")))
        label = str(loc[-1]) if len(loc) > 1 else "The value"
        if hint:
            return f"{label} {hint}", error_type
        return f"{label} does not have the expected format (see /docs)", error_type
    if error_type == "value_error":
        return message.removeprefix("Value error, "), error_type
    return _PLAIN_MESSAGES.get(error_type, message), error_type


def _either(messages: list[str]) -> str:
    """ "Input should be a valid string" + "… a valid integer" → "… a valid string or integer"."""
    unique = list(dict.fromkeys(messages))
    for prefix in ("Input should be a valid ", "Input should be "):
        if all(message.startswith(prefix) for message in unique):
            parts = [message.removeprefix(prefix) for message in unique]
            return prefix + (
                ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]
            )
    return "; or ".join(unique)
