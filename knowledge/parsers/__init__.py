"""Turn an uploaded file's bytes into blocks of text (and conversations) for chunking."""

from knowledge.parsers.base import Block, ParsedConversation, ParsedDocument, ParseError, Turn
from knowledge.parsers.detect import decode_text, detect


def parse_file(data: bytes, filename: str = "") -> ParsedDocument:
    kind = detect(data, filename)
    if kind == "pdf":
        from knowledge.parsers.pdf import parse_pdf

        parsed = parse_pdf(data)
    elif kind == "docx":
        from knowledge.parsers.docx import parse_docx

        parsed = parse_docx(data)
    else:
        text = decode_text(data)
        if kind in ("json", "jsonl"):
            from knowledge.parsers.structured import parse_json_text

            parsed = parse_json_text(text, lines=kind == "jsonl")
        elif kind == "csv":
            from knowledge.parsers.tabular import parse_csv

            parsed = parse_csv(text)
        elif kind == "transcript":
            from knowledge.parsers.text import parse_transcript

            parsed = parse_transcript(text)
        else:
            from knowledge.parsers.text import parse_text

            parsed = parse_text(text, markdown=kind == "markdown")
    _warn_on_misnamed(parsed, filename)
    return parsed


def _warn_on_misnamed(parsed: ParsedDocument, filename: str) -> None:
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    expected = {"pdf": "pdf", "docx": "docx"}
    family = parsed.detected_type.split("-")[0]
    if extension in expected and family != expected[extension]:
        parsed.warnings.append(f"The file is named .{extension} but contains {family}; it was read as {family}.")
    elif extension not in ("", "pdf", "docx") and family in ("pdf", "docx"):
        parsed.warnings.append(f"The file is named .{extension} but is a {family.upper()}; it was read as one.")


__all__ = ["Block", "ParsedConversation", "ParsedDocument", "ParseError", "Turn", "parse_file"]
