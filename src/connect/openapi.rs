//! The JSON face described as OpenAPI 3 (`docs/openapi.json`), generated from the same
//! descriptor set the face transcodes with: every RPC is a `POST` path, its request and response
//! messages schemas in proto3 JSON, the client key a bearer scheme, and every error Connect's
//! error JSON. `tests/api/json.rs` regenerates it and fails while the committed one differs.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use super::{SERVICE, Schema};

/// The OpenAPI 3 document of the service's JSON face.
pub fn document(schema: &Schema) -> Value {
    let mut paths = serde_json::Map::new();
    let mut messages = BTreeMap::new();
    for method in schema.methods(SERVICE) {
        collect(&method.input(), &mut messages);
        collect(&method.output(), &mut messages);
        paths.insert(format!("/{SERVICE}/{}", method.name()), operation(&method));
    }
    let mut schemas: serde_json::Map<String, Value> =
        messages.values().map(|message| (message.full_name().to_owned(), message_schema(message))).collect();
    schemas.insert("connect.Error".into(), connect_error());
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "wxauth JSON face (Connect protocol, unary)",
            "version": "v1",
            "description": "Every RPC of wxauth.v1.WeChatOAuthService as JSON on the gRPC port (docs/api.md, \"JSON and curl\"). Generated from proto/wxauth/v1/wxauth.proto; do not edit."
        },
        "servers": [{ "url": "http://127.0.0.1:50051", "description": "the dev mode (`cargo run`)" }],
        "security": [{ "clientKey": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "clientKey": { "type": "http", "scheme": "bearer", "description": "The client's key (`clients.<name>.key_sha256` holds its SHA-256)." }
            },
            "schemas": schemas
        }
    })
}

/// One RPC as a `POST` operation.
fn operation(method: &prost_reflect::MethodDescriptor) -> Value {
    let reference = |m: &MessageDescriptor| json!({ "$ref": format!("#/components/schemas/{}", m.full_name()) });
    json!({ "post": {
        "operationId": method.name(),
        "parameters": [
            { "name": "Connect-Timeout-Ms", "in": "header", "required": false,
              "description": "The call's deadline in milliseconds (1 to 10 digits).",
              "schema": { "type": "string", "pattern": "^[0-9]{1,10}$" } },
            { "name": "Connect-Protocol-Version", "in": "header", "required": false,
              "schema": { "type": "string", "enum": ["1"] } },
            { "name": "traceparent", "in": "header", "required": false,
              "description": "W3C trace context: wxauth's span of the call joins the caller's trace.",
              "schema": { "type": "string" } }
        ],
        "requestBody": { "required": true, "content": { "application/json": { "schema": reference(&method.input()) } } },
        "responses": {
            "200": { "description": "The answer.", "content": { "application/json": { "schema": reference(&method.output()) } } },
            "default": { "description": "A Connect error: the HTTP status of its code, the reasons of docs/api.md's Errors.",
                         "content": { "application/json": { "schema": { "$ref": "#/components/schemas/connect.Error" } } } }
        }
    }})
}

/// `message` and every message its fields reach (well-known types are written inline).
fn collect(message: &MessageDescriptor, found: &mut BTreeMap<String, MessageDescriptor>) {
    if is_well_known(message) || found.contains_key(message.full_name()) {
        return;
    }
    found.insert(message.full_name().to_owned(), message.clone());
    for field in message.fields() {
        if let Kind::Message(inner) = field.kind() {
            if inner.is_map_entry() {
                if let Some(value) = inner.map_entry_value_field().kind().as_message() {
                    collect(value, found);
                }
            } else {
                collect(&inner, found);
            }
        }
    }
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.")
}

/// A message as a JSON object of its fields by JSON name.
fn message_schema(message: &MessageDescriptor) -> Value {
    let properties: serde_json::Map<String, Value> =
        message.fields().map(|field| (field.json_name().to_owned(), field_schema(&field))).collect();
    json!({ "type": "object", "properties": properties, "additionalProperties": false })
}

/// A field's schema: repeated as an array, a map as an object.
fn field_schema(field: &FieldDescriptor) -> Value {
    if field.is_map() {
        let value = match field.kind() {
            Kind::Message(entry) => kind_schema(&entry.map_entry_value_field().kind()),
            other => kind_schema(&other),
        };
        return json!({ "type": "object", "additionalProperties": value });
    }
    let one = kind_schema(&field.kind());
    if field.cardinality() == Cardinality::Repeated { json!({ "type": "array", "items": one }) } else { one }
}

/// A value's schema in proto3 JSON: 64-bit integers as strings, bytes as base64, enums by name,
/// Timestamp as RFC 3339, Duration as seconds with an `s`.
fn kind_schema(kind: &Kind) -> Value {
    match kind {
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "format": "byte" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
        Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "int64", "minimum": 0 }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            json!({ "type": "string", "format": "int64" })
        }
        Kind::Float | Kind::Double => json!({ "type": "number" }),
        Kind::Enum(e) => {
            json!({ "type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>() })
        }
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
            "google.protobuf.Duration" => json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$" }),
            name if name.starts_with("google.protobuf.") => json!({}),
            name => json!({ "$ref": format!("#/components/schemas/{name}") }),
        },
    }
}

/// Connect's error JSON, with wxauth's detail types.
fn connect_error() -> Value {
    let codes: BTreeSet<&str> = super::ALL_CODES.iter().map(|c| super::code_name(*c)).filter(|c| *c != "ok").collect();
    json!({
        "type": "object",
        "required": ["code"],
        "properties": {
            "code": { "type": "string", "enum": codes },
            "message": { "type": "string" },
            "details": { "type": "array", "items": {
                "type": "object",
                "required": ["type", "value"],
                "properties": {
                    "type": { "type": "string", "description": "google.rpc.ErrorInfo, google.rpc.BadRequest or google.rpc.RetryInfo (others may be added)." },
                    "value": { "type": "string", "format": "byte", "description": "The detail's protobuf, base64 without padding." },
                    "debug": { "type": "object", "description": "The detail as proto3 JSON (ErrorInfo: reason, domain, metadata; BadRequest: fieldViolations; RetryInfo: retryDelay)." }
                }
            }}
        }
    })
}
