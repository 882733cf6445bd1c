"""JSON request bodies: parsed once, every way they can be bad answered as a 400 naming the problem."""

from __future__ import annotations

import json
from typing import Any

from routerops.serving.errors import ApiError

# Deeper than any request we take (a chat body is 4 levels deep): bounded so that nothing after the
# parse (validation, logging, json.dumps) recurses on attacker-chosen depth.
MAX_JSON_DEPTH = 32


def _depth_over(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return False


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ApiError(400) saying what is wrong with it."""
    try:
        payload = json.loads(body)
    except RecursionError:  # the C parser recurses per level: ~1000 levels exhaust the stack
        raise ApiError(400, f"JSON body nested too deeply (the limit is {MAX_JSON_DEPTH} levels)",
                       code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    if _depth_over(payload, MAX_JSON_DEPTH):
        raise ApiError(400, f"JSON body nested too deeply (the limit is {MAX_JSON_DEPTH} levels)",
                       code="invalid_json")
    return payload
