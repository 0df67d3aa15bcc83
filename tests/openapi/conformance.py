"""Whether an HTTP answer is one the OpenAPI document lists: its status, its body against the
JSON Schema of that status (jsonschema, draft 2020-12) and its required headers."""

from __future__ import annotations

import json
from typing import Any

import httpx
from jsonschema import Draft202012Validator

COMPONENT_PREFIX = "#/components/schemas/"


def inlined(node: Any, document: dict[str, Any]) -> Any:
    """`node` with each reference to a component replaced by the component."""
    if isinstance(node, dict):
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith(COMPONENT_PREFIX):
            component = document["components"]["schemas"][reference.removeprefix(COMPONENT_PREFIX)]
            return inlined(component, document)
        return {key: inlined(value, document) for key, value in node.items()}
    if isinstance(node, list):
        return [inlined(value, document) for value in node]
    return node


def problems(document: dict[str, Any], path: str, response: httpx.Response) -> list[str]:
    """What in `response` to a call of the operation at `path` (as the document writes it)
    the document does not say; empty when it conforms."""
    method = response.request.method.lower()
    operation = document["paths"][path][method]
    answer = operation["responses"].get(str(response.status_code))
    name = f"{method.upper()} {path} -> {response.status_code}"
    if answer is None:
        return [f"{name}: status not documented ({sorted(operation['responses'])})"]
    found = [
        f"{name}: required header {header} missing"
        for header, spec in answer.get("headers", {}).items()
        if spec.get("required") and header not in response.headers
    ]
    content = answer.get("content")
    if content is None:
        if response.content:
            found.append(f"{name}: a body where none is documented: {response.text[:200]}")
        return found
    media_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if media_type not in content:
        return [*found, f"{name}: media type {media_type!r} not documented"]
    try:
        body = json.loads(response.content)
    except ValueError:
        return [*found, f"{name}: the body is not JSON: {response.text[:200]}"]
    validator = Draft202012Validator(inlined(content[media_type]["schema"], document))
    found.extend(
        f"{name}: {error.message} at {list(error.absolute_path)}"
        for error in validator.iter_errors(body)
    )
    return found
