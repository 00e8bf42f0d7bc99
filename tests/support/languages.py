"""The check that a page or an email in German, French or Spanish has no English left in it:
every English fragment of the catalogues' messages that the translation does not share, and the
commonest English words (for a string never wrapped for translation)."""

from __future__ import annotations

import html as htmllib
import re
from functools import cache

from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from support.paths import ROOT

KEYWORDS = {"_": None, "gettext": None, "lazy_gettext": None, "_l": None, "N_": None}
ENGLISH_WORDS = re.compile(r"\b(?:the|your|you|and|this|with|please|have)\b", re.IGNORECASE)
ADDRESSES = re.compile(r"\S+@\S+|https?://\S+")


@cache
def source_messages() -> frozenset:
    with open(ROOT / "babel.cfg", encoding="utf-8") as config:
        method_map, options_map = parse_mapping_cfg(config)
    keywords = {**KEYWORDS, "ngettext": (1, 2)}
    found = extract_from_dir(
        str(ROOT), method_map, options_map, keywords=keywords, strip_comment_tags=True
    )
    return frozenset(message for _, _, message, _, _ in found)


@cache
def catalogue(language: str):
    path = ROOT / "translations" / language / "LC_MESSAGES" / "messages.po"
    with open(path, "rb") as po:
        return read_po(po, locale=language)


def visible_text(page: str) -> str:
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", page))


@cache
def english_fragments(language: str) -> tuple[str, ...]:
    po = catalogue(language)
    english = []
    for message in source_messages():
        if isinstance(message, str):
            english.append((message, po[message].string))
        else:
            forms = " ".join(po[message[0]].string)
            english += [(message[0], forms), (message[1], forms)]
    fragments = set()
    for message, translation in english:
        for part in re.split(r"%\(\w+\)[sd]|<[^>]+>", message):
            part = " ".join(part.split()).strip(" ,.:;")
            if len(part) >= 4 and part not in translation:
                fragments.add(part)
    return tuple(sorted(fragments, key=len, reverse=True))


def assert_no_english(text: str, language: str, where: str) -> None:
    text = " ".join(text.split())
    leaks = [f for f in english_fragments(language) if re.search(rf"\b{re.escape(f)}\b", text)]
    assert not leaks, f"English on the {where} in {language}: {leaks}"
    prose = ADDRESSES.sub(" ", text)
    words = [prose[max(0, m.start() - 30) : m.end() + 30] for m in ENGLISH_WORDS.finditer(prose)]
    assert not words, f"English (not in the catalogues) on the {where} in {language}: {words}"
