"""CISI's raw distribution (CISI.ALL, CISI.QRY, CISI.REL) as a BEIR folder, byte for byte the conversion the
mirror holds (its README, "BEIR-format conversion"): CISI has no BEIR release to download, so a machine without
the mirror builds the folder from the raw files, and the registry's checksums prove it built the same one."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rerankforge.inference.modeling.files import atomic_write_text

# The field markers the conversion knows. Document 321 also has ``.K`` and ``.C`` lines, which the mirror's
# conversion kept as part of its text: they are not markers here either, or the bytes would differ.
MARKER = re.compile(r"^\.([ITAWXB])(?: (.*))?$")
QUERY_METADATA = (("T", "title"), ("A", "author"), ("B", "bib"))


def cisi_records(text: str) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """``(id, [(marker, lines), ...])`` for each ``.I`` record, its fields in the file's order."""
    records: list[tuple[str, list[tuple[str, list[str]]]]] = []
    for line in text.split("\n"):
        marker = MARKER.match(line)
        if marker and marker.group(1) == "I":
            records.append((marker.group(2).strip(), []))
        elif marker:
            records[-1][1].append((marker.group(1), []))
        elif records and records[-1][1]:
            records[-1][1][-1][1].append(line)
    return records


def field_text(fields: list[tuple[str, list[str]]], key: str) -> str | None:
    """Every ``key`` field of a record, lines joined and whitespace collapsed, the fields joined by a space."""
    parts = [" ".join(" ".join(lines).split()) for marker, lines in fields if marker == key]
    parts = [part for part in parts if part]
    return " ".join(parts) if parts else None


def write_cisi_beir(raw: Path, folder: Path) -> None:
    """``raw/cisi/raw/CISI.*`` (the mirror's layout) -> ``folder/cisi/{corpus.jsonl, queries.jsonl, qrels/test.tsv}``."""
    raw, folder = raw / "cisi" / "raw", folder / "cisi"
    corpus = [
        {"_id": doc_id, "title": field_text(fields, "T") or "", "text": field_text(fields, "W") or "",
         "metadata": {"author": field_text(fields, "A") or ""}}
        for doc_id, fields in cisi_records((raw / "CISI.ALL").read_text(encoding="utf-8"))
    ]  # fmt: skip
    queries = []
    for query_id, fields in cisi_records((raw / "CISI.QRY").read_text(encoding="utf-8")):
        metadata = {name: field_text(fields, key) for key, name in QUERY_METADATA}
        metadata = {name: text for name, text in metadata.items() if text is not None}
        queries.append({"_id": query_id, "text": field_text(fields, "W") or "", "metadata": metadata})
    qrels = ["query-id\tcorpus-id\tscore"]  # every judged pair relevant, duplicates kept as the file has them
    for line in (raw / "CISI.REL").read_text(encoding="utf-8").splitlines():
        if line.strip():
            query_id, doc_id = line.split()[:2]
            qrels.append(f"{query_id}\t{doc_id}\t1")
    atomic_write_text(folder / "corpus.jsonl", "".join(json.dumps(row) + "\n" for row in corpus))
    atomic_write_text(folder / "queries.jsonl", "".join(json.dumps(row) + "\n" for row in queries))
    atomic_write_text(folder / "qrels" / "test.tsv", "\n".join(qrels) + "\n")
