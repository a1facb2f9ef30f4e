"""Figures that cannot drift: every figure in a table of README.md or docs/*.md is in its source, as written.

What is checked: each Markdown pipe table outside fenced code blocks, row by row (the header row names columns and
is skipped). The convention, documented for writers in docs/development.md ("Figures in tables"):

- A table names its source in a caption line, the nearest non-blank line just below the table (or just above
  it), starting with ``Source:``. Items are separated by ``;``::

      Source: benchmarks/RESULTS.md, "Cross-encoder quality: FlagEmbedding 1.4.2 vs rerankforge" 2026-12-06
      Source: docs/results/make-train-2026-12-07.json
      Source: benchmarks/RESULTS.md, "Inference speed" 2026-12-02 06:59; "Inference speed" 2026-12-06
      Source: settings (each loss's options and their defaults)

  A path (from the repository's root) is the whole file. ``PATH, "HEADING"`` is the ``## `` sections of that
  Markdown file whose heading starts with HEADING; a date after it (``2026-12-02`` or ``2026-12-02 06:59``) keeps
  the sections whose ``- date:`` line starts with it (RESULTS.md repeats its headings: the date picks the run).
  An item that starts with a quoted heading reads the file of the item before it. ``settings`` says the table
  holds settings, defaults or limits, not measurements, and is not checked. A table without a caption line is
  checked against all of benchmarks/RESULTS.md.
- A figure is a number written with a decimal point (``0.8394``), an exponent (``1.6e-5``) or a trailing ``x`` or
  ``%`` (``2.72x``, ``7.0%``, ``23%``): the forms measurements take in these docs. Plain integers are not figures:
  in these tables they are counts, steps, seeds, layers, batch sizes and exit codes, mostly settings, and
  checking them would flag every setting or need a list of exceptions (the price: an integer measurement, such as
  a pairs/s of 18,573, is not checked). Not figures either: text in code spans (flags and settings, like
  ``--relative-margin 0.05``), link targets, versions (two or more dots: ``1.4.2``) and numbers glued to a letter
  (``v1.1``, ``Qwen2-1.5B``), which are names. The sign, the ``x`` and the ``%`` are not part of the figure
  (``-0.3`` is looked up as ``0.3``).
- A figure matches a number of a Markdown source as written: the same digits before and after the point, so
  ``2.71x`` does not match the ``2.72x`` a run printed and ``0.135`` does not match ``0.1353`` (a rounding of
  it); an exponent counts by its value (``1.6e-5`` matches ``1.6e-05``, ``2.1`` matches ``2.1e+00``). A JSON
  source (an evaluation output) keeps full floats, so there a figure matches a number it is the correct rounding
  of at its own decimals (``0.8516`` for 0.8516231...): the precision the tools print, still one exact value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

DEFAULT_SOURCE = "benchmarks/RESULTS.md"

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
SEPARATOR_ROW = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
SOURCE_LINE = re.compile(r"^\s*source:\s*(.*?)\s*$", re.IGNORECASE)
CODE_SPAN = re.compile(r"(`+).+?\1")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
HTML_COMMENT = re.compile(r"<!--.*?-->")
THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# a figure in a doc table: sign, digits (the point optional), exponent, x or %; not inside a word or a version
FIGURE = re.compile(
    r"(?<![\w.])[-+\u2212]?(?P<mantissa>\d+(?:\.\d+)?)(?:[eE](?P<exponent>[-+]?\d+))?(?P<suffix>[x%])?"
    r"(?!\w|\.\d)"
)
# any number in a Markdown source (glued to a letter or not: "0.5s" still counts there)
NUMBER = re.compile(r"(?<![\d.])(?P<mantissa>\d+(?:\.\d+)?)(?:[eE](?P<exponent>[-+]?\d+))?(?!\d|\.\d)")
ITEM = re.compile(
    r"^(?:(?P<path>[\w./-]+\.(?:md|json))\s*,?\s*)?"
    r'(?:"(?P<heading>[^"]+)"\s*,?\s*(?P<date>\d{4}-\d{2}-\d{2}(?: \d{2}:\d{2})?)?)?$'
)
ITEM_SEPARATOR = re.compile(r';(?=(?:[^"]*"[^"]*")*[^"]*$)')  # a ; outside quotes


@dataclass(frozen=True)
class Figure:
    text: str  # as written in the doc, for messages
    mantissa: str  # the digits as written, without thousands separators
    exponent: int | None

    @property
    def decimals(self) -> int:
        return len(self.mantissa.partition(".")[2])


@dataclass(frozen=True)
class Table:
    doc: str
    line: int  # of the header row, 1-based
    rows: list[tuple[int, str]]  # the body rows: (line, text)
    source: str | None  # the caption line's text after "Source:"; None when there is none


@dataclass(frozen=True)
class Source:
    path: str
    heading: str | None = None
    date: str | None = None

    def __str__(self) -> str:
        heading = f' "{self.heading}"' if self.heading else ""
        return f"{self.path}{heading}{' ' + self.date if self.date else ''}"


def exponent_value(written: str | None) -> int | None:
    """An exponent by its value; ``e+00`` is none (``2.1e+00`` is 2.1 written by a format string)."""
    return (int(written) or None) if written else None


def figures(text: str) -> list[Figure]:
    """The figures of a piece of a table (see the module docstring for what counts)."""
    text = THOUSANDS.sub("", CODE_SPAN.sub(" ", LINK_TARGET.sub("]", HTML_COMMENT.sub(" ", text))))
    found = []
    for match in FIGURE.finditer(text):
        if "." in match["mantissa"] or match["exponent"] or match["suffix"]:  # else a plain integer
            found.append(
                Figure(match[0].lstrip("+-\u2212"), match["mantissa"], exponent_value(match["exponent"]))
            )
    return found


def number_keys(text: str) -> set[tuple[str, int | None]]:
    """Every number of a Markdown source: (its digits as written, its exponent's value)."""
    return {(m["mantissa"], exponent_value(m["exponent"])) for m in NUMBER.finditer(THOUSANDS.sub("", text))}


def tables(text: str, rel: str) -> list[Table]:
    """The pipe tables of a Markdown text outside fenced code, each with its caption's source."""
    lines = text.splitlines()
    found: list[Table] = []
    fence: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        match = FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
        elif (
            fence is None
            and line.lstrip().startswith("|")
            and index + 1 < len(lines)
            and SEPARATOR_ROW.match(lines[index + 1])
        ):
            end = index + 2
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            rows = [(number + 1, lines[number]) for number in range(index + 2, end)]
            found.append(Table(rel, index + 1, rows, caption_source(lines, index, end, rel)))
            index = end
            continue
        index += 1
    return found


def caption_source(lines: list[str], start: int, end: int, rel: str) -> str | None:
    """The text after ``Source:`` on the nearest non-blank line below the table (``end``: the line after it) or
    above it (``start``: its header row), with at most one blank line between."""
    captions = []
    for step, position in ((1, end), (-1, start - 1)):
        if 0 <= position < len(lines) and not lines[position].strip():
            position += step
        if 0 <= position < len(lines) and (match := SOURCE_LINE.match(lines[position])):
            captions.append(match.group(1))
    assert len(captions) < 2, f"{rel}:{start + 1}: a table with a Source: line both above and below"
    return captions[0] if captions else None


def parse_source(text: str | None) -> list[Source] | None:
    """The items of a caption (None: ``settings``, not checked); ValueError for what it cannot read."""
    if text is None:
        return [Source(DEFAULT_SOURCE)]
    items = [item.strip() for item in ITEM_SEPARATOR.split(text.strip().rstrip(".")) if item.strip()]
    if items and re.match(r"settings\b", items[0], re.IGNORECASE):
        if len(items) > 1:
            raise ValueError("`settings` stands alone: a table is settings or measurements, not both")
        return None
    sources: list[Source] = []
    for item in items:
        match = ITEM.match(item)
        if not match or not (match["path"] or match["heading"]):
            raise ValueError(f'cannot read the source item {item!r} (PATH, or PATH, "HEADING" DATE)')
        path = match["path"] or (sources[-1].path if sources else None)
        if path is None:
            raise ValueError(f"{item!r}: a heading with no file before it")
        sources.append(Source(path, match["heading"], match["date"]))
    if not sources:
        raise ValueError("an empty Source: line")
    return sources


def markdown_sections(text: str) -> list[tuple[str, str | None, str]]:
    """(heading, the value of its ``- date:`` line, text) of each ``## `` section of a Markdown file."""
    sections = []
    for chunk in re.split(r"^(?=## )", text, flags=re.MULTILINE):
        if chunk.startswith("## "):
            date = re.search(r"^- date:\s*(.+)$", chunk, flags=re.MULTILINE)
            sections.append(
                (chunk.splitlines()[0][3:].strip(), date.group(1).strip() if date else None, chunk)
            )
    return sections


def source_texts(source: Source) -> list[str]:
    """The text(s) a Markdown source item names; AssertionError when its file or section does not exist."""
    path = REPO / source.path
    assert path.is_file(), f"the source {source.path} does not exist"
    text = path.read_text(encoding="utf-8")
    if source.heading is None:
        return [text]
    picked = [
        body
        for heading, date, body in markdown_sections(text)
        if heading.startswith(source.heading) and (date or "").startswith(source.date or "")
    ]
    assert picked, f"no section of {source}"
    return picked


def json_leaves(value) -> list:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in json_leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in json_leaves(item)]
    return [value]


class Lookup:
    """The numbers one table's figures may come from."""

    def __init__(self, sources: list[Source]):
        self.keys: set[tuple[str, int | None]] = set()
        self.floats: list[float] = []
        for source in sources:
            if source.path.endswith(".json"):
                assert (REPO / source.path).is_file(), f"the source {source.path} does not exist"
                for leaf in json_leaves(json.loads((REPO / source.path).read_text(encoding="utf-8"))):
                    if isinstance(leaf, str):
                        self.keys |= number_keys(leaf)
                    elif isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
                        self.floats.append(float(leaf))
            else:
                for text in source_texts(source):
                    self.keys |= number_keys(text)

    def has(self, figure: Figure) -> bool:
        if (figure.mantissa, figure.exponent) in self.keys:
            return True
        if figure.exponent is None:
            return any(f"{value:.{figure.decimals}f}" == figure.mantissa for value in self.floats)
        written = float(f"{figure.mantissa}e{figure.exponent}")
        return any(float(f"{value:.{figure.decimals}e}") == written for value in self.floats)


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(REPO).as_posix() for d in DOCS])
def test_every_table_figure_is_in_its_source(doc: Path):
    problems = []
    for table in tables(doc.read_text(encoding="utf-8"), doc.relative_to(REPO).as_posix()):
        try:
            sources = parse_source(table.source)
            lookup = Lookup(sources) if sources is not None else None
        except (ValueError, AssertionError) as error:
            problems.append(f"{table.doc}:{table.line}: Source: {error}")
            continue
        if lookup is None:
            continue  # settings
        for line, row in table.rows:
            missing = [f.text for f in figures(row) if not lookup.has(f)]
            if missing:
                problems.append(
                    f"{table.doc}:{line}: {', '.join(missing)} not in {'; '.join(map(str, sources))}"
                )
    message = "\n".join(problems)
    assert not problems, f"{len(problems)} table row(s) with a figure not in the table's source:\n{message}"


# ---------------------------------------------------------------------------------------------------------------
# the rules themselves, on small cases


def test_what_counts_as_a_figure():
    row = "| 2.72x | 0.8270 (0.0398) | 1.6e-5 | 7.0% | 23% | -0.3 | +2.4, +0.8 | ends a sentence 0.8394. |"
    assert [f.text for f in figures(row)] == [
        "2.72x", "0.8270", "0.0398", "1.6e-5", "7.0%", "23%", "0.3", "2.4", "0.8", "0.8394",
    ]  # fmt: skip
    names = "| 280 steps | seed 42 | 2026-12-06 | FlagEmbedding 1.4.2 | SQuAD v1.1 | Qwen2-1.5B | `lr 2e-4` |"
    assert figures(names) == []
    assert figures("| [a guide](docs/a-0.5.md) | 18,573.5 |") == [Figure("18573.5", "18573.5", None)]


def test_figures_match_as_written_not_after_rounding():
    lookup = Lookup([])
    lookup.keys = number_keys("| auto | 2.72x | ECE 0.1353 -> 0.0075 | 1.6e-05 | 2.1e+00 | 18573 |")
    assert lookup.has(figures("2.72x")[0]) and not lookup.has(figures("2.71x")[0])
    assert lookup.has(figures("0.1353")[0]) and not lookup.has(figures("0.135")[0])
    assert lookup.has(figures("1.6e-5")[0]) and lookup.has(figures("2.1")[0])
    assert not lookup.has(figures("1.6")[0]) and not lookup.has(figures("2.10")[0])
    lookup.floats = [0.8516231183180578]  # a JSON source: the correct rounding at the figure's decimals
    assert lookup.has(figures("0.8516")[0]) and lookup.has(figures("0.852")[0])
    assert not lookup.has(figures("0.8517")[0]) and not lookup.has(figures("0.8515")[0])


def test_source_lines_and_sections():
    assert parse_source(None) == [Source(DEFAULT_SOURCE)]
    assert parse_source("settings (the recipe's options)") is None
    assert parse_source(
        'benchmarks/RESULTS.md, "Losses compared" 2026-12-02; "Inference speed" 2026-12-02 06:59.'
    ) == [
        Source("benchmarks/RESULTS.md", "Losses compared", "2026-12-02"),
        Source("benchmarks/RESULTS.md", "Inference speed", "2026-12-02 06:59"),
    ]
    for unreadable in (
        "the 2026-12-02 run",
        '"a heading" with no file',
        "settings; benchmarks/RESULTS.md",
        "",
    ):
        with pytest.raises(ValueError):
            parse_source(unreadable)
    text = "# top\n\n## Run\n\n- date: 2026-12-02 06:59 UTC\n\n1.5\n\n## Run\n\n- date: 2026-12-06\n\n2.5\n"
    assert [(h, d) for h, d, _ in markdown_sections(text)] == [
        ("Run", "2026-12-02 06:59 UTC"),
        ("Run", "2026-12-06"),
    ]


def test_a_table_and_its_caption_are_found():
    text = (
        "Intro:\n\n| a | b |\n|---|---|\n| x | 0.5 |\n\nSource: settings\n\n"
        "```\n| in | code |\n|---|---|\n| 1.5 | 2.5 |\n```\n\n| c |\n|---|\n| 2.71x |\n"
    )
    assert tables(text, "doc.md") == [
        Table("doc.md", 3, [(5, "| x | 0.5 |")], "settings"),
        Table("doc.md", 15, [(17, "| 2.71x |")], None),
    ]
