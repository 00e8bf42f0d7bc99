"""What the list endpoints read from the query string: the page (`limit`, or offset pages with
`page[number]` and `page[size]`: app/controllers/concerns/pagination.rb,
app/models/concerns/pageable.rb and limitable.rb) and the `metadata[key]=value` filters
(`has_scope :metadata` of the controllers, `search_metadata` in app/models/user.rb and
license.rb). Keygen's cursor pages (`page[cursor]`) are not emulated: they answer 400."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

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


_PAGE_PARAM = re.compile(r"page\[([^\[\]]*)\]")
_PAGE_SHAPES = ({"number"}, {"number", "size"})  # and Keygen's cursor shapes, not emulated
PAGE_UPPER = 100  # Pageable::PAGE_UPPER and SIZE_UPPER


def paginate(items: Sequence, query: Mapping[str, str], path: str) -> tuple[list, dict]:
    """The items of the page asked for (newest first, as sorted by the caller), and what the
    document adds: without `page`, the first `limit` and nothing; with `page[number]` (1 to 100)
    and `page[size]` (1 to 100, else `limit`), that page and its `links` (OffsetResult#links)."""
    page = {}
    for name, value in query.items():
        found = _PAGE_PARAM.fullmatch(name)
        if found:
            page[found[1]] = value
    if not page:
        return list(items[: page_limit(query)]), {}
    if set(page) not in _PAGE_SHAPES:
        detail = "page must be an object containing a cursor or number and optional size"
        raise Halt(400, [error("Bad request", detail, parameter="page")])
    number = _ruby_to_i(page["number"])
    size = _ruby_to_i(page["size"]) if "size" in page else page_limit(query)
    if not 1 <= number <= PAGE_UPPER:
        detail = f"page number must be a number between 1 and {PAGE_UPPER} (got {number})"
        raise Halt(400, [error("Bad request", detail, parameter="page[number]")])
    if not 1 <= size <= PAGE_UPPER:
        detail = f"page size must be a number between 1 and {PAGE_UPPER} (got {size})"
        raise Halt(400, [error("Bad request", detail, parameter="page[size]")])
    pages = math.ceil(len(items) / size)
    others = {k: v for k, v in query.items() if not _PAGE_PARAM.fullmatch(k)}

    def link(to: int | None) -> str | None:
        if to is None:
            return None
        params = sorted({**others, "page[number]": str(to), "page[size]": str(size)}.items())
        return f"{path}?{urlencode(params)}"

    inside = number <= pages
    links = {
        "self": link(number),
        "prev": link(number - 1 if inside and number > 1 else None),
        "next": link(number + 1 if number < pages else None),
        "first": link(1),
        "last": link(pages),
        "meta": {"pages": pages, "count": len(items)},
    }
    return list(items[(number - 1) * size : number * size]), {"links": links}


def _ruby_to_i(text: str) -> int:
    """String#to_i: the leading integer, 0 without one."""
    found = re.match(r"\s*([+-]?\d+)", text)
    return int(found[1]) if found else 0


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
