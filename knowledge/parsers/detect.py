"""Decide what a file is from its bytes; the name is only a hint."""

from __future__ import annotations

import io
import json
import re
import zipfile

from charset_normalizer import from_bytes

from knowledge.parsers.base import ParseError

BINARY_SIGNATURES = {
    b"\x7fELF": "an executable (ELF)",
    b"MZ": "a Windows executable",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\xd0\xcf\x11\xe0": "a legacy Office file (.doc/.xls); save it as .docx or .csv",
    b"Rar!": "a RAR archive",
    b"\x1f\x8b": "a gzip archive",
    b"7z\xbc\xaf": "a 7-Zip archive",
    b"{\\rtf": "an RTF document; save it as .docx or .txt",
}

TRANSCRIPT_LINE = re.compile(r"^\s*(?:\[[^\]]{1,30}\]\s*)?([A-Za-z][\w .'@-]{0,40}?)\s*:\s+(\S.*)$")


def decode_text(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    best = from_bytes(data[:2_000_000]).best()
    if best is None:
        raise ParseError("The file is not text in any encoding we recognise (it may be a binary file).")
    return data.decode(best.encoding, errors="replace")


def looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 text with its byte order mark
        return False
    if b"\x00" in sample and not (sample.startswith(b"\xff\xfe") or sample.startswith(b"\xfe\xff")):
        return True
    control = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return bool(sample) and control / len(sample) > 0.1


def detect(data: bytes, filename: str = "") -> str:
    """One of pdf, docx, json, jsonl, csv, transcript, markdown, text. Raises ParseError."""
    if not data or not data.strip():
        raise ParseError("The file is empty.")
    if data.startswith(b"PK\x03\x04"):
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            raise ParseError("The file is a damaged ZIP/Office container and cannot be opened.") from None
        if "word/document.xml" in names:
            return "docx"
        if any(n.startswith("xl/") for n in names):
            raise ParseError("Excel workbooks are not supported; export the sheet as CSV and upload that.")
        raise ParseError("ZIP archives are not supported; extract the files and upload them one by one.")
    if b"%PDF-" in data[:1024]:  # PDF allows a little junk before the header
        return "pdf"
    for signature, what in BINARY_SIGNATURES.items():
        if data.startswith(signature):
            raise ParseError(f"Unsupported file type: this is {what}.")
    if looks_binary(data):
        lower = filename.lower()
        if lower.endswith(".pdf"):
            raise ParseError("The file is named .pdf but is not a PDF (it is corrupt or another format).")
        if lower.endswith(".docx"):
            raise ParseError("The file is named .docx but is not a Word document (it is corrupt or another format).")
        raise ParseError("Unsupported binary file: upload PDF, DOCX, CSV, JSON, TXT or Markdown.")
    text = decode_text(data)
    return detect_text(text, filename)


def detect_text(text: str, filename: str = "") -> str:
    stripped = text.lstrip()
    lower = filename.lower()
    if stripped[:1] in "[{":
        try:
            json.loads(stripped)
            return "json"
        except ValueError:
            lines = [line for line in stripped.splitlines() if line.strip()]
            if lines and all(_is_json_object(line) for line in lines[:50]):
                return "jsonl"
            if lower.endswith((".json", ".jsonl")):
                raise ParseError("The JSON is malformed: " + _json_error(stripped)) from None
    lines = [line for line in text.splitlines() if line.strip()]
    if _looks_like_csv(lines, lower):
        return "csv"
    if _looks_like_transcript(lines):
        return "transcript"
    if lower.endswith((".md", ".markdown")) or sum(1 for line in lines if re.match(r"^#{1,6} \S", line)) >= 1:
        return "markdown"
    return "text"


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _json_error(text: str) -> str:
    try:
        json.loads(text)
    except ValueError as exc:
        return str(exc)
    return ""


def _looks_like_csv(lines: list[str], lower: str) -> bool:
    if len(lines) < 2:
        return False
    if lower.endswith((".csv", ".tsv")):
        return True
    import csv

    sample = "\n".join(lines[:30])
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        return False
    rows = list(csv.reader(lines[:30], dialect))
    widths = [len(r) for r in rows]
    return widths[0] >= 2 and sum(1 for w in widths if w == widths[0]) >= 0.8 * len(widths)


def _looks_like_transcript(lines: list[str]) -> bool:
    if len(lines) < 2:
        return False
    matches = [TRANSCRIPT_LINE.match(line) for line in lines]
    hits = [m.group(1).strip().lower() for m in matches if m]
    return len(hits) >= 0.6 * len(lines) and len(set(hits)) >= 2 and len(set(hits)) <= max(2, len(hits) // 2)
