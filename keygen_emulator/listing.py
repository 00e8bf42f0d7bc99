"""What the list endpoints read from the query string: the page size (`limit`, in
app/controllers/concerns/pagination.rb) and the `metadata[key]=value` filters (`has_scope
:metadata` of the controllers, `search_metadata` in app/models/user.rb and license.rb)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from keygen_emulator.errors import Halt, error
from keygen_emulator.formats import underscore

DEFAULT_LIMIT = 10  # Pagination::DEFAULT_PAGE_SIZE
_METADATA_PARAM = re.compile(r"metadata\[([^\[\]]+)\]")


def page_limit(query: Mapping[str, str]) -> int:
    """`limit`: 1 to 100 (the models' `with_limit`), 10 when absent; anything else is a 400."""
    if "limit" not in query:
        return DEFAULT_LIMIT
    raw = query["limit"]
    limit = int(raw) if re.fullmatch(r"[+-]?\d{1,9}", raw.strip()) else 0
    if not 1 <= limit <= 100:
        detail = f"limit must be a number between 1 and 100 (got {raw})"
        raise Halt(400, [error("Bad request", detail, parameter="limit")])
    return limit


def metadata_filters(query: Mapping[str, str]) -> dict[str, str]:
    """`metadata[someKey]=value` pairs, keys underscored as Keygen stores them."""
    filters = {}
    for name, value in query.items():
        found = _METADATA_PARAM.fullmatch(name)
        if found:
            filters[underscore(found[1])] = value
    return filters


def metadata_matches(metadata: Mapping[str, Any], filters: Mapping[str, str]) -> bool:
    """Whether each filter is contained in the metadata (PostgreSQL's `@>`), as the text given
    or as the value that text reads as: "true", "false", "null", an integer or a decimal."""
    for key, text in filters.items():
        if key not in metadata:
            return False
        stored = metadata[key]
        if not any(type(stored) is type(v) and stored == v for v in (text, _typed(text))):
            return False
    return True


def _typed(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"\d+\.\d+", text):
        return float(text)
    return text
