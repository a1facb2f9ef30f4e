"""Retrieval data sets in one in-memory form (corpus, queries, qrels), from BEIR folders or SQuAD JSON.

Both readers keep, for each query, the group it belongs to (its SQuAD article, or itself for BEIR), so a split
by group never puts one article's questions or paragraphs on both sides.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from rerankforge.data_tools.data_names import data_path, hub_dataset_id
from rerankforge.inference.modeling.files import atomic_writer


@dataclass
class IRDataset:
    """corpus: doc id -> passage text; queries: query id -> text; qrels: query id -> {doc id: relevance}."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    query_groups: dict[str, str] = field(default_factory=dict)  # query id -> article (or itself)
    doc_groups: dict[str, str] = field(
        default_factory=dict
    )  # doc id -> article (empty: not split by article)
    name: str = ""

    def judged_queries(self) -> list[str]:
        """Queries with at least one relevant document: the only ones that can be evaluated or trained on."""
        return [q for q in self.queries if any(r > 0 for r in self.qrels.get(q, {}).values())]

    def relevant(self, query_id: str) -> set[str]:
        return {d for d, r in self.qrels.get(query_id, {}).items() if r > 0}

    def subset(self, query_ids: Iterable[str], name: str) -> IRDataset:
        """The given queries with their qrels; the corpus is cut to their articles when docs have articles."""
        keep = set(query_ids)
        queries = {q: t for q, t in self.queries.items() if q in keep}
        corpus = self.corpus
        if self.doc_groups:
            groups = {self.query_groups[q] for q in keep}
            corpus = {d: t for d, t in self.corpus.items() if self.doc_groups[d] in groups}
        return IRDataset(
            corpus=corpus,
            queries=queries,
            qrels={q: self.qrels[q] for q in queries if q in self.qrels},
            query_groups={q: self.query_groups.get(q, q) for q in queries},
            doc_groups={d: self.doc_groups[d] for d in corpus} if self.doc_groups else {},
            name=name,
        )


def passage_text(title: str, text: str) -> str:
    """BEIR's convention for rerankers: the title, then the text."""
    title = title.strip()
    return f"{title}. {text.strip()}" if title else text.strip()


def _read_jsonl(path: Path) -> Iterable[dict]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None


def load_beir(folder: str | Path, split: str = "test") -> IRDataset:
    """A BEIR folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv (header: query-id corpus-id score)."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise FileNotFoundError(f"{qrels_path}: no such split (available: {', '.join(available) or 'none'})")
    corpus = {str(d["_id"]): passage_text(d.get("title", ""), d["text"]) for d in beir_corpus_rows(folder)}
    queries = {str(q["_id"]): q["text"] for q in _read_jsonl(folder / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    missing = [f"{q}/{d}" for q, docs in qrels.items() for d in docs if q not in queries or d not in corpus]
    if missing:
        raise ValueError(f"{qrels_path}: {len(missing)} judgment(s) name unknown ids, e.g. {missing[:3]}")
    return IRDataset(
        corpus, queries, qrels, query_groups={q: q for q in queries}, name=f"{folder.name}/{split}"
    )


def beir_corpus_rows(folder: str | Path) -> list[dict]:
    """A BEIR folder's corpus.jsonl rows (``_id``, ``title``, ``text``) as written, in the file's order."""
    return list(_read_jsonl(Path(folder) / "corpus.jsonl"))


def load_squad(path: str | Path) -> IRDataset:
    """SQuAD v1.1 JSON: the paragraphs form the corpus, each question's paragraph is its relevant passage."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    return squad_from_articles(data, name=Path(path).stem)


def squad_from_articles(data: list[dict], name: str) -> IRDataset:
    """SQuAD's article / paragraph / question nesting as an IRDataset (doc id: ``article-paragraph``)."""
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    query_groups: dict[str, str] = {}
    doc_groups: dict[str, str] = {}
    for doc_id, title, paragraph in squad_paragraphs(data):
        corpus[doc_id] = passage_text(squad_title(title), paragraph["context"])
        doc_groups[doc_id] = title
        for qa in paragraph["qas"]:
            queries[qa["id"]] = qa["question"].strip()
            qrels[qa["id"]] = {doc_id: 1}
            query_groups[qa["id"]] = title
    return IRDataset(corpus, queries, qrels, query_groups, doc_groups, name=name)


def squad_paragraphs(data: list[dict]) -> Iterator[tuple[str, str, dict]]:
    """``(doc id, article title, paragraph)`` in the file's order; the doc id is ``article-paragraph``."""
    for article_index, article in enumerate(data):
        for paragraph_index, paragraph in enumerate(article["paragraphs"]):
            yield f"{article_index}-{paragraph_index}", article["title"], paragraph


def squad_title(title: str) -> str:
    """An article's title as its passages show it (``Super_Bowl_50`` -> ``Super Bowl 50``)."""
    return title.replace("_", " ")


def load_hub_beir(name: str, split: str = "test") -> IRDataset:  # pragma: no cover - needs the Hub
    """A BEIR data set on the Hub (``BeIR/<name>`` with ``BeIR/<name>-qrels``), through `datasets`."""

    corpus_rows = datasets.load_dataset(name, "corpus", split="corpus")
    query_rows = datasets.load_dataset(name, "queries", split="queries")
    qrel_rows = datasets.load_dataset(f"{name}-qrels", split=split)
    qrels: dict[str, dict[str, int]] = {}
    for row in qrel_rows:
        qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
    queries = {str(r["_id"]): r["text"] for r in query_rows}
    return IRDataset(
        {str(r["_id"]): passage_text(r.get("title", ""), r["text"]) for r in corpus_rows},
        queries,
        qrels,
        query_groups={q: q for q in queries},
        name=f"{name}/{split}",
    )


SQUAD_HUB_NAMES = ("squad", "rajpurkar/squad")


def load_hub_squad(name: str = "rajpurkar/squad", split: str = "validation") -> IRDataset:  # pragma: no cover
    """SQuAD v1.1 from the Hub, through `datasets`, in the same form as `load_squad`."""

    articles: dict[str, dict] = {}
    for row in datasets.load_dataset(name, split=split):
        article = articles.setdefault(row["title"], {"title": row["title"], "paragraphs": {}})
        paragraph = article["paragraphs"].setdefault(row["context"], {"context": row["context"], "qas": []})
        paragraph["qas"].append({"id": row["id"], "question": row["question"]})
    data = [{"title": a["title"], "paragraphs": list(a["paragraphs"].values())} for a in articles.values()]
    return squad_from_articles(data, name=f"{name}/{split}")


def load_ir_dataset(name_or_path: str | Path, split: str = "test") -> IRDataset:
    """A BEIR folder or a SQuAD JSON file, by path or by name (`data_names.data_path`: ``squad-v1.1-dev``,
    ``cisi``, a URL with its checksum), or (online) SQuAD or a BEIR data set by its Hub id."""
    if str(name_or_path) in SQUAD_HUB_NAMES and not Path(name_or_path).exists():
        return load_hub_squad(str(name_or_path))
    hub_id = hub_dataset_id(name_or_path)
    if hub_id is not None:
        return load_hub_beir(hub_id, split)
    path = data_path(name_or_path)
    return load_beir(path, split) if path.is_dir() else load_squad(path)


def split_by_group(dataset: IRDataset, eval_fraction: float, seed: int = 0) -> tuple[IRDataset, IRDataset]:
    """Train and held-out parts that share no query (and no article or paragraph where docs have articles)."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    groups = sorted({dataset.query_groups.get(q, q) for q in dataset.queries})
    random.Random(seed).shuffle(groups)
    held_out = set(groups[: max(1, round(len(groups) * eval_fraction))])
    train_ids = [q for q in dataset.queries if dataset.query_groups.get(q, q) not in held_out]
    eval_ids = [q for q in dataset.queries if dataset.query_groups.get(q, q) in held_out]
    return dataset.subset(train_ids, f"{dataset.name}/train"), dataset.subset(
        eval_ids, f"{dataset.name}/eval"
    )


def load_ir_split(
    name_or_path: str | Path, split: str = "test", eval_fraction: float = 0.2, seed: int = 0
) -> IRDataset:
    """One split of a data set: a BEIR qrels split, or for SQuAD ``train`` / ``test`` by article (or ``all``)."""
    return select_split(load_ir_dataset(name_or_path, split), split, eval_fraction, seed)


def select_split(dataset: IRDataset, split: str, eval_fraction: float = 0.2, seed: int = 0) -> IRDataset:
    """For data sets without their own splits (SQuAD dev): ``train`` / ``test`` by article, or ``all``."""
    if not dataset.doc_groups or split == "all":
        return dataset
    train, held_out = split_by_group(dataset, eval_fraction, seed)
    if split == "train":
        return train
    if split in ("test", "eval"):
        return held_out
    raise ValueError(f"unknown split {split!r} for {dataset.name}: use train, test or all")


def sample_queries(dataset: IRDataset, max_queries: int | None, seed: int) -> IRDataset:
    """A seeded sample of ``max_queries`` judged queries (all when None) over the whole training corpus, so
    negatives still come from all of it: few-label runs, and a teacher that scores only what is trained on."""
    judged = dataset.judged_queries()
    if max_queries is None or max_queries >= len(judged):
        return dataset
    chosen = set(random.Random(seed).sample(judged, max_queries))
    return dataclasses.replace(
        dataset,
        queries={q: t for q, t in dataset.queries.items() if q in chosen},
        qrels={q: r for q, r in dataset.qrels.items() if q in chosen},
        name=f"{dataset.name}[{max_queries} queries]",
    )


def write_beir(
    dataset: IRDataset, qrels_by_split: dict[str, dict[str, dict[str, int]]], folder: str | Path
) -> Path:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) that `load_beir` reads back unchanged.

    Passages are written as ``text`` with an empty title (they already carry theirs, see `passage_text`), so
    reading the folder gives the same texts; each file is written atomically.
    """

    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with atomic_writer(folder / "corpus.jsonl") as handle:
        for doc_id, text in dataset.corpus.items():
            handle.write(json.dumps({"_id": doc_id, "title": "", "text": text}, ensure_ascii=False) + "\n")
    with atomic_writer(folder / "queries.jsonl") as handle:
        for query_id, text in dataset.queries.items():
            handle.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")
    for split, qrels in qrels_by_split.items():
        with atomic_writer(folder / "qrels" / f"{split}.tsv") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for query_id, docs in qrels.items():
                for doc_id, relevance in docs.items():
                    handle.write(f"{query_id}\t{doc_id}\t{relevance}\n")
    return folder
