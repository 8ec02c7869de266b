"""Checks that run before a parser touches a file: containers and formats that can exhaust
memory or CPU, or reach outside the file, are refused with a reason the uploader can read.

- ZIP containers (DOCX): entry count, total uncompressed size, per-entry compression ratio, and no
  absolute or ``..`` entry names.
- OOXML XML parts: no DTD or entity declarations (billion laughs, external entities).
- JSON: at most ``JSON_MAX_CHARS`` characters, no NaN/Infinity, nesting at most ``JSON_MAX_DEPTH``
  levels.
- Row and page caps are applied by the CSV and PDF parsers (``CSV_MAX_ROWS``, ``PDF_MAX_PAGES``).
"""

from __future__ import annotations

import io
import json
import re
import zipfile

from knowledge.parsers.base import ParseError

ZIP_MAX_ENTRIES = 5000
ZIP_MAX_TOTAL_BYTES = 300 * 1024 * 1024
ZIP_MAX_RATIO = 200  # uncompressed / compressed, for entries over 1 MB uncompressed
XML_PART_SCAN_BYTES = 64 * 1024 * 1024
JSON_MAX_DEPTH = 64
JSON_MAX_CHARS = 32 * 1024 * 1024  # decoded text; Python objects take ~10x that in memory
CSV_MAX_ROWS = 500_000
PDF_MAX_PAGES = 5000

_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.I)


def zip_guard(data: bytes) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ParseError(f"The file is not a readable ZIP container ({exc}).") from None
    if len(entries) > ZIP_MAX_ENTRIES:
        raise ParseError(f"The document holds {len(entries)} parts; at most {ZIP_MAX_ENTRIES} are accepted.")
    total = 0
    for entry in entries:
        name = entry.filename.replace("\\", "/")
        if name.startswith("/") or ".." in name.split("/") or re.match(r"^[A-Za-z]:", name):
            raise ParseError(f"The document contains an unsafe part name ({entry.filename[:80]!r}).")
        total += entry.file_size
        if entry.file_size > 1024 * 1024 and entry.file_size > ZIP_MAX_RATIO * max(entry.compress_size, 1):
            raise ParseError(
                f"The document looks like a compression bomb: part {entry.filename[:80]!r} expands "
                f"{entry.file_size // max(entry.compress_size, 1)} times."
            )
    if total > ZIP_MAX_TOTAL_BYTES:
        raise ParseError(
            f"The document expands to {total // (1024 * 1024)} MB; at most {ZIP_MAX_TOTAL_BYTES // (1024 * 1024)} MB "
            "are accepted."
        )
    return archive


def ooxml_guard(data: bytes) -> None:
    """A DOCX (or other OOXML) package that is safe to hand to the XML parser."""
    archive = zip_guard(data)
    for entry in archive.infolist():
        if not entry.filename.lower().endswith((".xml", ".rels")):
            continue
        with archive.open(entry) as part:
            head = part.read(min(entry.file_size, XML_PART_SCAN_BYTES))
        if _DECLARATION.search(head):
            raise ParseError(
                f"The document's part {entry.filename[:80]!r} declares a DTD or entities, which Word never writes; "
                "it is refused (entity expansion / external entity attack)."
            )


def _no_constants(name: str):
    raise ParseError(f"The JSON contains {name}, which is not valid JSON.")


def json_loads(text: str):
    """``json.loads`` that refuses NaN/Infinity and nesting deeper than ``JSON_MAX_DEPTH`` (the
    C decoder stops runaway recursion with RecursionError; the depth is then checked without
    recursion)."""
    if len(text) > JSON_MAX_CHARS:
        raise ParseError(f"The JSON is larger than {JSON_MAX_CHARS // (1024 * 1024)} MB; split it into several files.")
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise ParseError(f"The JSON is nested more than {JSON_MAX_DEPTH} levels deep.") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > JSON_MAX_DEPTH:
                raise ParseError(f"The JSON is nested more than {JSON_MAX_DEPTH} levels deep.")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    if re.search(r"\\u[dD][89a-fA-F]", text):  # \ud800-style escapes: maybe lone surrogates
        value = _no_lone_surrogates(value)
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_lone_surrogates(value):
    """A lone UTF-16 surrogate (``"\\ud800"`` in JSON) is not text: PostgreSQL and the tokenizer
    reject it. Each becomes U+FFFD (depth is already capped, so recursion is bounded)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_no_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_no_lone_surrogates(k): _no_lone_surrogates(v) for k, v in value.items()}
    return value
