"""An evaluation set of long documents: consecutive passages of one article joined, each query judged against
the document that holds its passage.

Why: SQuAD's paragraphs and most BEIR passages fit a cross-encoder's 512 tokens, so truncation never shows
what it costs. Joining an article's paragraphs in order into documents of 600-1000 tokens puts many answers
past the cut, with the same questions and judgments, which measures long-passage scoring (FirstP / MaxP in
`inference.long_passages`) and training on windows (`passage_windows`). A paragraph is never cut: documents
are made of whole passages, in their order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rerankforge.data_tools.data_names import data_path
from rerankforge.data_tools.ir_data import (
    IRDataset,
    beir_corpus_rows,
    load_ir_split,
    passage_text,
    squad_paragraphs,
    squad_title,
)

DEFAULT_MIN_TOKENS, DEFAULT_MAX_TOKENS = 600, 1000


@dataclass(frozen=True)
class PassageGroup:
    """Passages that read on from one another (one SQuAD article, or consecutive BEIR entries sharing a
    title): ``(passage id, text without the title)`` in order."""

    title: str
    passages: list[tuple[str, str]]


@dataclass(frozen=True)
class LongDocument:
    doc_id: str
    title: str
    passage_ids: tuple[str, ...]
    text: str
    tokens: int


def document_text(title: str, passages: list[str]) -> str:
    """The title once at the start, as `passage_text` writes it, then the passages as paragraphs."""
    return passage_text(title, "\n\n".join(p.strip() for p in passages))


def source_groups(path: str | Path) -> list[PassageGroup]:
    """A SQuAD JSON file's articles, or a BEIR folder's runs of consecutive corpus entries with one title (an
    entry without a title stands alone)."""
    path = data_path(path)
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
        rows = [(doc_id, squad_title(title), p["context"]) for doc_id, title, p in squad_paragraphs(data)]
    elif path.is_dir():
        rows = [(str(r["_id"]), (r.get("title") or "").strip(), r["text"]) for r in beir_corpus_rows(path)]
    else:
        raise FileNotFoundError(
            f"{path}: no such file or folder (long-docs reads SQuAD JSON or a BEIR folder)"
        )
    groups: list[PassageGroup] = []
    for doc_id, title, text in rows:
        if not (groups and title and title == groups[-1].title):
            groups.append(PassageGroup(title, []))
        groups[-1].passages.append((doc_id, text))
    return groups


def pack_group(
    group: PassageGroup, count_tokens: Callable[[str], int], min_tokens: int, max_tokens: int
) -> list[LongDocument]:
    """Consecutive passages joined until a document reaches ``min_tokens``, never past ``max_tokens`` (unless
    one passage alone is longer: it is a document of its own). A document closes short when the next passage
    would take it past the maximum; the group's short remainder joins the document before it if that stays
    within the maximum, else stands alone."""

    def length(members: list[tuple[str, str]]) -> int:
        return count_tokens(document_text(group.title, [text for _, text in members]))

    closed: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    tokens = 0
    for passage in group.passages:
        if current and tokens < min_tokens:
            longer = length(current + [passage])
            if longer <= max_tokens:
                current, tokens = current + [passage], longer
                continue
        if current:
            closed.append(current)
        current, tokens = [passage], length([passage])
    if current:
        if closed and tokens < min_tokens and length(closed[-1] + current) <= max_tokens:
            closed[-1] = closed[-1] + current
        else:
            closed.append(current)
    return [long_document(group.title, members, count_tokens) for members in closed]


def long_document(
    title: str, members: list[tuple[str, str]], count_tokens: Callable[[str], int]
) -> LongDocument:
    """A document of consecutive passages; its id names the first and the last (``3-0..3-4``)."""
    ids = tuple(doc_id for doc_id, _ in members)
    text = document_text(title, [text for _, text in members])
    doc_id = ids[0] if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"
    return LongDocument(doc_id, title, ids, text, count_tokens(text))


def build_long_documents(
    data: str | Path,
    count_tokens: Callable[[str], int],
    min_tokens: int = DEFAULT_MIN_TOKENS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    split: str = "test",
    eval_fraction: float = 0.2,
    split_seed: int = 0,
) -> tuple[IRDataset, list[LongDocument]]:
    """The split's queries (for SQuAD the held-out articles, selected as `rerankforge-eval --split` selects
    them) over long documents of the split's passages; a query is relevant to each document holding one of its
    judged passages, with the highest relevance among them."""
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"need 1 <= --min-tokens <= --max-tokens, got {min_tokens} and {max_tokens}")
    dataset = load_ir_split(data, split, eval_fraction, split_seed)
    documents: list[LongDocument] = []
    for group in source_groups(data):
        kept = [(doc_id, text) for doc_id, text in group.passages if doc_id in dataset.corpus]
        if kept:
            documents += pack_group(PassageGroup(group.title, kept), count_tokens, min_tokens, max_tokens)
    holder = {passage: doc.doc_id for doc in documents for passage in doc.passage_ids}
    qrels: dict[str, dict[str, int]] = {}
    for query_id, judged in dataset.qrels.items():
        documents_judged = qrels.setdefault(query_id, {})
        for passage, relevance in judged.items():
            doc_id = holder[passage]
            documents_judged[doc_id] = max(relevance, documents_judged.get(doc_id, relevance))
    long = IRDataset(
        corpus={doc.doc_id: doc.text for doc in documents},
        queries={q: text for q, text in dataset.queries.items() if q in qrels},
        qrels=qrels,
        query_groups={q: dataset.query_groups.get(q, q) for q in qrels},
        name=f"{dataset.name} (long documents)",
    )
    return long, documents
