"""JSON Schemas (draft 2020-12) for the proto3 JSON form of protobuf messages.

Works from a ``FileDescriptorSet`` as written by
``protoc --descriptor_set_out=... --include_imports --include_source_info``; it
never looks at generated code. Used by ``scripts/generate.py``.

The schemas describe what ``google.protobuf.json_format.MessageToJson`` emits
and ``json_format.Parse`` accepts (the proto3 JSON mapping):

* properties are keyed by the field's ``json_name`` (lowerCamelCase); the
  original proto field name is accepted too when it differs, but not both at
  once; ``additionalProperties`` is false;
* any field may be ``null``, which a parser reads as "not set";
* int32/uint32/sint32/fixed32/sfixed32: a JSON integer within the type's range;
* 64-bit integers: a JSON integer within range or a decimal string (the
  printer emits strings);
* float/double: a JSON number or "NaN", "Infinity", "-Infinity";
* bytes: base64, standard or URL-safe alphabet, padding optional;
* enums: a value name or an int32;
* repeated fields: arrays (elements must not be null); map fields: objects;
* message fields: ``$ref`` to ``$defs`` entries named by full message name;
* well-known types use their special JSON forms (Timestamp is an RFC 3339
  string). ``google.protobuf.Any`` is not supported and raises an error.

Oneofs are plain optional properties: the schema does not enforce that at most
one member of a oneof is set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    FileDescriptorProto,
    FileDescriptorSet,
)

__all__ = ["SchemaError", "build_schema", "dump_schema", "load_descriptor_set"]

JSONSCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Schema = dict[str, Any]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UINT32_MAX = 2**32 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX = 2**64 - 1
_FLOAT_MAX = 3.4028234663852886e38

# Standard or URL-safe base64 alphabet, in groups of four, with an optional
# final group of two or three characters whose padding may be omitted.
_B64 = "[A-Za-z0-9+/_-]"
BASE64_PATTERN = f"^(?:{_B64}{{4}})*(?:{_B64}{{2}}(?:==)?|{_B64}{{3}}=?)?$"
TIMESTAMP_PATTERN = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    "(?:\\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})$"
)
DURATION_PATTERN = "^-?[0-9]+(?:\\.[0-9]{1,9})?s$"

_T = FieldDescriptorProto
_INT32_RANGES: dict[int, tuple[int, int]] = {
    _T.TYPE_INT32: (_INT32_MIN, _INT32_MAX),
    _T.TYPE_SINT32: (_INT32_MIN, _INT32_MAX),
    _T.TYPE_SFIXED32: (_INT32_MIN, _INT32_MAX),
    _T.TYPE_UINT32: (0, _UINT32_MAX),
    _T.TYPE_FIXED32: (0, _UINT32_MAX),
}
_INT64_RANGES: dict[int, tuple[int, int]] = {
    _T.TYPE_INT64: (_INT64_MIN, _INT64_MAX),
    _T.TYPE_SINT64: (_INT64_MIN, _INT64_MAX),
    _T.TYPE_SFIXED64: (_INT64_MIN, _INT64_MAX),
    _T.TYPE_UINT64: (0, _UINT64_MAX),
    _T.TYPE_FIXED64: (0, _UINT64_MAX),
}
_WRAPPER_TYPES: dict[str, int] = {
    "google.protobuf.DoubleValue": _T.TYPE_DOUBLE,
    "google.protobuf.FloatValue": _T.TYPE_FLOAT,
    "google.protobuf.Int64Value": _T.TYPE_INT64,
    "google.protobuf.UInt64Value": _T.TYPE_UINT64,
    "google.protobuf.Int32Value": _T.TYPE_INT32,
    "google.protobuf.UInt32Value": _T.TYPE_UINT32,
    "google.protobuf.BoolValue": _T.TYPE_BOOL,
    "google.protobuf.StringValue": _T.TYPE_STRING,
    "google.protobuf.BytesValue": _T.TYPE_BYTES,
}

# Source-info path components (field numbers in descriptor.proto).
_FILE_MESSAGE = FileDescriptorProto.MESSAGE_TYPE_FIELD_NUMBER
_FILE_ENUM = FileDescriptorProto.ENUM_TYPE_FIELD_NUMBER
_MSG_FIELD = DescriptorProto.FIELD_FIELD_NUMBER
_MSG_NESTED = DescriptorProto.NESTED_TYPE_FIELD_NUMBER
_MSG_ENUM = DescriptorProto.ENUM_TYPE_FIELD_NUMBER
_ENUM_VALUE = EnumDescriptorProto.VALUE_FIELD_NUMBER


class SchemaError(Exception):
    """The descriptors cannot be turned into a schema."""


@dataclass(frozen=True)
class _Message:
    proto: DescriptorProto
    path: tuple[int, ...]
    comments: dict[tuple[int, ...], str]


@dataclass(frozen=True)
class _Enum:
    proto: EnumDescriptorProto
    path: tuple[int, ...]
    comments: dict[tuple[int, ...], str]


def load_descriptor_set(data: bytes) -> FileDescriptorSet:
    """Parse the bytes of a serialized ``FileDescriptorSet``."""
    fds = FileDescriptorSet()
    fds.ParseFromString(data)
    return fds


def dump_schema(schema: Schema) -> str:
    """Serialize deterministically: sorted keys, 2-space indent, final newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build_schema(
    fds: FileDescriptorSet,
    root_message: str,
    *,
    schema_id: str,
    comment: str,
) -> Schema:
    """Build the schema for the proto3 JSON form of message ``root_message``.

    ``root_message`` is a full name without a leading dot, for example
    ``plasm.v1.JobManifest``.
    """
    return _Builder(fds).build(root_message, schema_id=schema_id, comment=comment)


def _clean_comment(text: str) -> str:
    lines = [line.removeprefix(" ") for line in text.split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip()


def _json_name(field: FieldDescriptorProto) -> str:
    if field.HasField("json_name"):
        return field.json_name
    # protoc always fills json_name in; this mirrors its ToJsonName().
    parts = field.name.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _nullable(schema: Schema) -> Schema:
    """Also accept JSON null (a parser treats it as "field not set")."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list):
        return {**schema, "type": [*kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _ref(full_name: str) -> Schema:
    return {"$ref": f"#/$defs/{full_name}"}


class _Builder:
    def __init__(self, fds: FileDescriptorSet) -> None:
        self._messages: dict[str, _Message] = {}
        self._enums: dict[str, _Enum] = {}
        for file in fds.file:
            comments = self._file_comments(file)
            prefix = f"{file.package}." if file.package else ""
            for i, msg in enumerate(file.message_type):
                self._index_message(msg, prefix, (_FILE_MESSAGE, i), comments)
            for i, enum in enumerate(file.enum_type):
                self._enums[prefix + enum.name] = _Enum(enum, (_FILE_ENUM, i), comments)
        self._defs: dict[str, Schema] = {}

    @staticmethod
    def _file_comments(file: FileDescriptorProto) -> dict[tuple[int, ...], str]:
        comments: dict[tuple[int, ...], str] = {}
        for loc in file.source_code_info.location:
            text = loc.leading_comments or loc.trailing_comments
            cleaned = _clean_comment(text) if text else ""
            if cleaned:
                comments[tuple(loc.path)] = cleaned
        return comments

    def _index_message(
        self,
        msg: DescriptorProto,
        prefix: str,
        path: tuple[int, ...],
        comments: dict[tuple[int, ...], str],
    ) -> None:
        full_name = prefix + msg.name
        self._messages[full_name] = _Message(msg, path, comments)
        for i, nested in enumerate(msg.nested_type):
            self._index_message(nested, f"{full_name}.", (*path, _MSG_NESTED, i), comments)
        for i, enum in enumerate(msg.enum_type):
            self._enums[f"{full_name}.{enum.name}"] = _Enum(enum, (*path, _MSG_ENUM, i), comments)

    def _message(self, full_name: str) -> _Message:
        try:
            return self._messages[full_name]
        except KeyError:
            raise SchemaError(f"message {full_name} is not in the descriptor set") from None

    def build(self, root: str, *, schema_id: str, comment: str) -> Schema:
        self._defs = {}
        self._define_message(root)
        schema: Schema = {
            "$schema": JSONSCHEMA_DIALECT,
            "$id": schema_id,
            "$comment": comment,
            "title": root,
            "$ref": f"#/$defs/{root}",
            "$defs": self._defs,
        }
        description = self._message(root).comments.get(self._message(root).path)
        if description:
            schema["description"] = description
        return schema

    # -- definitions -------------------------------------------------------

    def _define_message(self, full_name: str) -> None:
        if full_name in self._defs:
            return
        if full_name.startswith("google.protobuf."):
            self._defs[full_name] = self._well_known(full_name)
            return
        msg = self._message(full_name)
        definition: Schema = {"type": "object", "additionalProperties": False}
        self._defs[full_name] = definition  # registered first: allows recursion
        description = msg.comments.get(msg.path)
        if description:
            definition["description"] = description
        properties: Schema = {}
        dependent: Schema = {}
        for i, field in enumerate(msg.proto.field):
            prop = self._field_schema(field)
            field_doc = msg.comments.get((*msg.path, _MSG_FIELD, i))
            if field_doc:
                prop = {"description": field_doc, **prop}
            json_name = _json_name(field)
            properties[json_name] = prop
            if field.name != json_name:
                properties[field.name] = prop
                dependent[json_name] = {"not": {"required": [field.name]}}
        definition["properties"] = properties
        if dependent:
            definition["dependentSchemas"] = dependent

    def _define_enum(self, full_name: str) -> None:
        if full_name in self._defs:
            return
        try:
            enum = self._enums[full_name]
        except KeyError:
            raise SchemaError(f"enum {full_name} is not in the descriptor set") from None
        doc = enum.comments.get(enum.path, "")
        value_docs = []
        for i, value in enumerate(enum.proto.value):
            value_doc = enum.comments.get((*enum.path, _ENUM_VALUE, i))
            if value_doc:
                value_docs.append(f"- {value.name}: {' '.join(value_doc.split())}")
        description = "\n\n".join(part for part in (doc, "\n".join(value_docs)) if part)
        definition: Schema = {
            "anyOf": [
                {"type": "string", "enum": [v.name for v in enum.proto.value]},
                {"type": "integer", "minimum": _INT32_MIN, "maximum": _INT32_MAX},
            ]
        }
        if description:
            definition["description"] = description
        self._defs[full_name] = definition

    def _well_known(self, full_name: str) -> Schema:
        if full_name == "google.protobuf.Timestamp":
            return {
                "type": "string",
                "format": "date-time",
                "pattern": TIMESTAMP_PATTERN,
                "description": "google.protobuf.Timestamp: an RFC 3339 timestamp, "
                'for example "1972-01-01T10:00:20.021Z". Printers emit UTC ("Z") '
                "with 0, 3, 6 or 9 fractional digits; parsers accept offsets.",
            }
        if full_name == "google.protobuf.Duration":
            return {
                "type": "string",
                "pattern": DURATION_PATTERN,
                "description": 'google.protobuf.Duration: seconds with suffix "s", '
                'for example "1.5s".',
            }
        if full_name == "google.protobuf.FieldMask":
            return {"type": "string", "description": "google.protobuf.FieldMask"}
        if full_name == "google.protobuf.Empty":
            return {"type": "object", "additionalProperties": False}
        if full_name == "google.protobuf.Struct":
            return {"type": "object"}
        if full_name == "google.protobuf.ListValue":
            return {"type": "array"}
        if full_name == "google.protobuf.Value":
            return {}
        if full_name in _WRAPPER_TYPES:
            return self._scalar_schema(_WRAPPER_TYPES[full_name], "")
        raise SchemaError(f"well-known type {full_name} is not supported")

    # -- fields ------------------------------------------------------------

    def _field_schema(self, field: FieldDescriptorProto) -> Schema:
        repeated = field.label == _T.LABEL_REPEATED
        if repeated and field.type == _T.TYPE_MESSAGE:
            entry = self._message(field.type_name.lstrip("."))
            if entry.proto.options.map_entry:
                return _nullable(self._map_schema(entry.proto))
        item = self._value_schema(field)
        if repeated:
            return _nullable({"type": "array", "items": item})
        return _nullable(item)

    def _value_schema(self, field: FieldDescriptorProto) -> Schema:
        type_name = field.type_name.lstrip(".")
        if field.type in (_T.TYPE_MESSAGE, _T.TYPE_GROUP):
            self._define_message(type_name)
            return _ref(type_name)
        if field.type == _T.TYPE_ENUM:
            self._define_enum(type_name)
            return _ref(type_name)
        return self._scalar_schema(field.type, field.name)

    def _scalar_schema(self, kind: int, field_name: str) -> Schema:
        if kind in _INT32_RANGES:
            low, high = _INT32_RANGES[kind]
            return {"type": "integer", "minimum": low, "maximum": high}
        if kind in _INT64_RANGES:
            low, high = _INT64_RANGES[kind]
            return {
                "type": ["integer", "string"],
                "minimum": low,
                "maximum": high,
                "pattern": "^[0-9]+$" if low == 0 else "^-?[0-9]+$",
            }
        if kind in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
            number: Schema = {"type": "number"}
            if kind == _T.TYPE_FLOAT:
                number.update(minimum=-_FLOAT_MAX, maximum=_FLOAT_MAX)
            return {
                "anyOf": [
                    number,
                    {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]},
                ]
            }
        if kind == _T.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == _T.TYPE_STRING:
            return {"type": "string"}
        if kind == _T.TYPE_BYTES:
            return {
                "type": "string",
                "contentEncoding": "base64",
                "pattern": BASE64_PATTERN,
            }
        raise SchemaError(f"field {field_name}: unsupported type {kind}")

    def _map_schema(self, entry: DescriptorProto) -> Schema:
        fields = {f.name: f for f in entry.field}
        key, value = fields["key"], fields["value"]
        schema: Schema = {
            "type": "object",
            "additionalProperties": self._value_schema(value),
        }
        if key.type in _INT32_RANGES or key.type in _INT64_RANGES:
            low, _ = _INT32_RANGES.get(key.type) or _INT64_RANGES[key.type]
            schema["propertyNames"] = {"pattern": "^[0-9]+$" if low == 0 else "^-?[0-9]+$"}
        elif key.type == _T.TYPE_BOOL:
            schema["propertyNames"] = {"enum": ["true", "false"]}
        return schema
