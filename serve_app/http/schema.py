"""Python types -> JSON Schema (2020-12, as OpenAPI 3.1 uses it), and that schema's OpenAPI 3.0 view.

The response shapes are ``TypedDict``s that the code building the answers is annotated with
(``tasks/results.py``, ``tasks/classification.py``, ``tasks/ocr.py``, ``http/shapes.py``);
:class:`SchemaSet` turns each into a named component once and answers ``$ref``s to it, so the
document (``http/openapi.py``) states no response field by hand. A ``TypedDict`` is closed
(``additionalProperties: false``): a field the code adds without adding it to the type makes
the answer fail its schema, in ``tests/test_openapi.py``, instead of drifting silently.

>>> from typing import NotRequired, TypedDict
>>> class Size(TypedDict):
...     width: int
...     label: NotRequired[str | None]
>>> schemas = SchemaSet()
>>> schemas.of(list[Size])
{'type': 'array', 'items': {'$ref': '#/components/schemas/Size'}}
>>> schemas.components["Size"]["required"], schemas.components["Size"]["properties"]["label"]
(['width'], {'type': ['string', 'null']})
>>> as_openapi_30({"type": ["string", "null"], "enum": ["a", None]})
{'type': 'string', 'enum': ['a', None], 'nullable': True}
"""
from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, NotRequired, Required, Union

REF_PREFIX = "#/components/schemas/"
_PRIMITIVES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


class SchemaSet:
    """The named schemas (``components.schemas``) that the types converted so far need."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}

    def ref(self, name: str) -> dict[str, str]:
        return {"$ref": REF_PREFIX + name}

    def add(self, name: str, schema: Mapping[str, Any]) -> dict[str, str]:
        """Name a schema written by hand (or derived from another); refuses a second, different one."""
        if name in self.components and self.components[name] != schema:
            raise ValueError(f"two different schemas named {name!r}")
        self.components[name] = dict(schema)
        return self.ref(name)

    def of(self, tp: Any) -> dict[str, Any]:
        """The JSON Schema of type ``tp``: a ``$ref`` for a ``TypedDict`` (added to the components)."""
        if typing.is_typeddict(tp):
            if tp.__name__ not in self.components:
                self.components[tp.__name__] = {}  # placed first: a type that refers to itself ends here
                self.components[tp.__name__] = self._typeddict(tp)
            return self.ref(tp.__name__)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return {**self.of(args[0]), **{k: v for meta in args[1:] if isinstance(meta, Mapping)
                                           for k, v in meta.items()}}
        if origin in (Required, NotRequired):
            return self.of(args[0])
        if tp in _PRIMITIVES:
            return {"type": _PRIMITIVES[tp]}
        if tp is Any or tp is object:
            return {}
        if origin is Literal:
            return {"enum": list(args)}
        if origin in (Union, types.UnionType):
            return _union([self.of(a) for a in args])
        if origin in (list, tuple, set, frozenset) or (origin is not None and _is_sequence(origin)):
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                items = _union([self.of(a) for a in dict.fromkeys(args)])
                return {"type": "array", "items": items, "minItems": len(args), "maxItems": len(args)}
            return {"type": "array", "items": self.of(args[0]) if args else {}}
        if origin is dict or (origin is not None and _is_mapping(origin)):
            return {"type": "object", "additionalProperties": self.of(args[1]) if args else {}}
        raise TypeError(f"no JSON Schema for {tp!r}")

    def _typeddict(self, tp: Any) -> dict[str, Any]:
        hints = typing.get_type_hints(tp, include_extras=True)
        schema: dict[str, Any] = {"type": "object", "properties": {k: self.of(v) for k, v in hints.items()}}
        required = [k for k, v in hints.items() if _required(k, v, tp)]
        if required:  # OpenAPI 3.0 refuses an empty list
            schema["required"] = required
        schema["additionalProperties"] = False
        doc = inspect.cleandoc(tp.__doc__ or "")
        if doc and not doc.startswith(tp.__name__ + "("):  # not the generated "Name(x, y)" signature
            schema = {"description": doc, **schema}
        return schema


def variant(schema: Mapping[str, Any], *, require: tuple[str, ...] = (), drop: tuple[str, ...] = (),
            description: str | None = None) -> dict[str, Any]:
    """An object schema with some optional properties made required and others taken out.

    One ``TypedDict`` can be the shape of several answers (``Prediction``: box, polygon or
    keypoints by task); a variant names what one route's answers hold.

    >>> variant({"type": "object", "properties": {"a": {}, "b": {}}}, require=("a",), drop=("b",))
    {'type': 'object', 'properties': {'a': {}}, 'required': ['a']}
    """
    unknown = set(require + drop) - set(schema["properties"])
    if unknown:
        raise ValueError(f"no properties {sorted(unknown)} in the schema")
    required = schema.get("required", [])
    out = {**schema, "properties": {k: v for k, v in schema["properties"].items() if k not in drop},
           "required": [*required, *(k for k in require if k not in required)]}
    if description is not None:
        out["description"] = description
    return out


def as_openapi_30(node: Any) -> Any:
    """A schema (or a whole document) in OpenAPI 3.0's dialect, for viewers that read only 3.0.

    Type lists holding ``null`` become ``nullable``, ``const`` an ``enum`` of one, ``examples`` one
    ``example``, a ``contentMediaType`` string ``format: binary`` (``contentEncoding: base64``:
    ``format: byte``), and ``anyOf`` with a ``null`` branch a ``nullable`` ``anyOf`` of the rest;
    ``openapi`` becomes ``3.0.3``.
    """
    if isinstance(node, list):
        return [as_openapi_30(v) for v in node]
    if not isinstance(node, Mapping):
        return node
    out = {k: as_openapi_30(v) for k, v in node.items()}
    if isinstance(out.get("openapi"), str):
        out["openapi"] = "3.0.3"
        out.pop("jsonSchemaDialect", None)
    kind = out.get("type")
    if isinstance(kind, list):
        rest = [t for t in kind if t != "null"]
        if len(rest) != 1:
            raise ValueError(f"OpenAPI 3.0 has no schema for the types {kind}")
        out["type"] = rest[0]
        if "null" in kind:
            out["nullable"] = True
    for key in ("anyOf", "oneOf"):
        branches = out.get(key)
        if isinstance(branches, list) and {"type": "null"} in branches:
            rest = [b for b in branches if b != {"type": "null"}]
            out.pop(key)
            out.update(rest[0] if len(rest) == 1 and "$ref" not in rest[0] else {key: rest})
            out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list) and "paths" not in out:
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    if "contentMediaType" in out:
        out.pop("contentMediaType")
        out["format"] = "binary"
    if out.get("contentEncoding") == "base64":
        out.pop("contentEncoding")
        out["format"] = "byte"
    return out


def _required(key: str, hint: Any, tp: Any) -> bool:
    """Whether a ``TypedDict`` key is required, read off its hint too: with postponed annotations
    (``from __future__ import annotations``) Python 3.11 misses ``NotRequired`` in ``__required_keys__``."""
    origin = typing.get_origin(hint)
    return origin is Required or (origin is not NotRequired and key in tp.__required_keys__)


def _union(branches: list[dict[str, Any]]) -> dict[str, Any]:
    """One schema for ``A | B``: a list of types when every branch is a bare primitive, else ``anyOf``."""
    if all(set(b) == {"type"} and isinstance(b["type"], str) for b in branches):
        return {"type": list(dict.fromkeys(b["type"] for b in branches))}
    if len(branches) == 2 and {"type": "null"} in branches and all(set(b) <= {"type", "enum"} for b in branches):
        other = next(b for b in branches if b != {"type": "null"})
        if "enum" in other and "type" not in other:
            return {"enum": [*other["enum"], None]}
    return {"anyOf": branches}


def _is_sequence(origin: Any) -> bool:
    from collections.abc import Sequence

    return isinstance(origin, type) and issubclass(origin, Sequence) and not issubclass(origin, str)


def _is_mapping(origin: Any) -> bool:
    return isinstance(origin, type) and issubclass(origin, Mapping)
