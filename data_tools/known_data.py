"""The data sets rerankforge knows by a short name: where each comes from, its checksums, and where its files lie
in a mirror (and in the download cache, which has the same layout), so a recipe says ``squad-v1.1-dev`` and reads
the same bytes on every machine. The sources and checksums are those the mirror's READMEs record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rerankforge.data_tools.cisi_conversion import write_cisi_beir


@dataclass(frozen=True)
class DataFile:
    """One file: its place inside a mirror (and the cache), its checksum, and where it is downloaded from
    (``url`` None: built from its data set's downloads; ``size`` None: not known in advance)."""

    path: str
    sha256: str
    size: int | None = None
    url: str | None = None


@dataclass(frozen=True)
class KnownData:
    """A named data set: ``path`` (a file or a folder inside the mirror) is what the name stands for and
    ``files`` what readers read there; ``downloads`` are fetched only for ``build`` to make ``files`` from
    (``build(downloads folder, files folder)``), as CISI's BEIR files are made from its raw distribution."""

    name: str
    path: str
    files: tuple[DataFile, ...]
    source: str
    downloads: tuple[DataFile, ...] = ()
    build: Callable[[Path, Path], None] | None = field(default=None, compare=False)


SQUAD_DEV = KnownData(
    name="squad-v1.1-dev",
    path="squad-v1.1/dev-v1.1.json",
    files=(
        DataFile(
            "squad-v1.1/dev-v1.1.json",
            "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9",
            4854279,
            "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json",
        ),
    ),
    source="SQuAD v1.1 dev (Rajpurkar et al., 2016), CC BY-SA 4.0",
)

CISI_RAW = "https://raw.githubusercontent.com/Shakiba-Alipour/Information-Retrieval-on-CISI/13e80360c2c0ca10d3fbf537d3cb2a213c664c40"
CISI = KnownData(
    name="cisi",
    path="cisi",
    files=(
        DataFile("cisi/corpus.jsonl", "e31a48669670956eae42daf4e38c11fb348323183347c062c2a7998a57abf5c3", 1341658),
        DataFile("cisi/queries.jsonl", "16dcd7bc18d26d2b15992a3bd221bd2312b741755ab443791e50fd899f54fb46", 70950),
        DataFile("cisi/qrels/test.tsv", "5ff417257cd005a90a06ad42f0468c791fb862f38cd9b53cac9e516ffe675011", 28373),
    ),
    downloads=(
        DataFile("cisi/raw/CISI.ALL", "c13934ad921234b571e7b424af3461fe39dccb16757cb21954b3aea5250d072e", 2119351,
                 f"{CISI_RAW}/CISI.ALL"),
        DataFile("cisi/raw/CISI.QRY", "b72de0e0cb8aa5c93ac988e5be0400cc18949d0a94913a248783a37dd97d5470", 66632,
                 f"{CISI_RAW}/CISI.QRY"),
        DataFile("cisi/raw/CISI.REL", "f7396c92586c61953ccb7ae99ad8d3ac749ac3b989041fc93a9e311568f58997", 77850,
                 f"{CISI_RAW}/CISI.REL"),
    ),
    build=write_cisi_beir,
    source="CISI library-science test collection (Glasgow IR group distribution), research use, as BEIR files",
)  # fmt: skip

# FlagEmbedding's reranker example files (MIT), at the commit the mirror copied them from
FE_COMMIT = (
    "https://raw.githubusercontent.com/FlagOpen/FlagEmbedding/7ed43d67ec03fbe5c31c0992dbfa941fb1860549"
)


def fe_toy(name: str, path: str, source_path: str, sha256: str, size: int) -> KnownData:
    return KnownData(
        name=f"fe-toy/{name}",
        path=f"fe-toy/{path}",
        files=(DataFile(f"fe-toy/{path}", sha256, size, f"{FE_COMMIT}/{source_path}"),),
        source=f"FlagEmbedding's {source_path} (MIT)",
    )


FE_TOY = (
    fe_toy("normal", "example_data/normal/examples.jsonl",
           "examples/finetune/reranker/example_data/normal/examples.jsonl",
           "86879da03121cee52ebdc917707f1e5afec3fc04998e1ef37891912b3bfb9b73", 104028),
    fe_toy("prompt_based", "example_data/prompt_based/examples.jsonl",
           "examples/finetune/reranker/example_data/prompt_based/examples.jsonl",
           "725cac7d98b6b948cdcdce2dc3ecb3f3dd2960e9d68c6a9ff270253847cd5cd7", 105618),
    fe_toy("llm_reranker", "llm_reranker/toy_finetune_data.jsonl", "research/llm_reranker/toy_finetune_data.jsonl",
           "ed0ed0aa3152c24587ff7764894d6fd1904355600c10e01274d17198ffad45fe", 6113),
    fe_toy("old_examples_reranker", "old_examples_reranker/toy_finetune_data.jsonl",
           "research/old-examples/reranker/toy_finetune_data.jsonl",
           "89c5abd24f15e3ddebbaba43b0840a3f09b7eb15caa1d5c45afd022a3f53c108", 4522),
)  # fmt: skip

KNOWN_DATA: dict[str, KnownData] = {data.name: data for data in (SQUAD_DEV, CISI, *FE_TOY)}


def known_file(url: str | None = None, sha256: str | None = None) -> DataFile | None:
    """The registry's file with this checksum (or, given no checksum, this URL): a URL naming a known file
    shares its mirror place and cache entry."""
    for data in KNOWN_DATA.values():
        for file in (*data.files, *data.downloads):
            if (sha256 and file.sha256 == sha256.lower()) or (not sha256 and url and file.url == url):
                return file
    return None
