"""The JSON Schema of the config file, for editors (yaml-language-server) and other tools.

``citygw schema`` prints it; ``config/citygw.schema.json`` is its committed copy, which the
example configs name in their ``# yaml-language-server: $schema=...`` modeline (a test keeps the
copy equal to this output: after changing a config model, run
``citygw schema > config/citygw.schema.json``).
"""

from __future__ import annotations

import json
from typing import Any

from citygw.config.model import Config

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ENV_REFERENCE = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*\}",
    "description": "${NAME}: the value of the environment variable NAME, put in at load",
}
_KEEP_OUTSIDE = ("title", "description", "default")


def config_schema() -> dict[str, Any]:
    """The schema of a config file (JSON Schema 2020-12), as pydantic derives it from the models."""
    schema = Config.model_json_schema()
    _allow_env(schema)
    schema["title"] = "citygw config"
    schema["description"] = (
        "citygw gateway configuration (YAML). `citygw check -c FILE` validates a file completely, "
        "including what a schema cannot say (files that must exist, a private key's mode)."
    )
    return {"$schema": DIALECT, **schema}


def schema_text() -> str:
    """:func:`config_schema` as the text ``citygw schema`` prints (indent 2, in declaration order)."""
    return json.dumps(config_schema(), indent=2) + "\n"


def _allow_env(node: Any) -> None:
    """Let every scalar key also hold a ``${NAME}`` reference (substituted before validation)."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict):
            for key, sub in properties.items():
                properties[key] = _with_env(sub)
        for value in node.values():
            _allow_env(value)
    elif isinstance(node, list):
        for item in node:
            _allow_env(item)


def _is_structure(schema: dict[str, Any]) -> bool:
    if "$ref" in schema or schema.get("type") in ("object", "array"):
        return True
    return any(_is_structure(s) for s in schema.get("anyOf", ()) if isinstance(s, dict))


def _with_env(schema: Any) -> Any:
    if not isinstance(schema, dict) or _is_structure(schema):
        return schema
    outside = {key: schema.pop(key) for key in _KEEP_OUTSIDE if key in schema}
    return {**outside, "anyOf": [schema, ENV_REFERENCE]}
