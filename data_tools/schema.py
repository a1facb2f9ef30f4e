"""The training JSONL schema and its validation.

Validation reads every line with the standard library before any model is loaded, so a typo on line
90,000 costs seconds, not a crashed run. Every problem is reported as ``FILE:LINE: FIELD: what is wrong``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_FIELDS = ("query", "pos")
OPTIONAL_FIELDS = ("neg", "pos_scores", "neg_scores", "prompt")
KNOWN_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
SCORE_FIELDS = {"pos_scores": "pos", "neg_scores": "neg"}


@dataclass(frozen=True)
class Issue:
    """One problem found in one line of one file."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


@dataclass
class ValidationReport:
    """Everything validation found, plus the counts that `rerankforge-data check` prints."""

    issues: list[Issue] = field(default_factory=list)
    issue_count: int = 0
    max_issues: int = 50
    records: int = 0
    pos_counts: list[int] = field(default_factory=list)
    neg_counts: list[int] = field(default_factory=list)
    with_teacher_scores: int = 0
    with_prompt: int = 0

    @property
    def ok(self) -> bool:
        return self.issue_count == 0

    def add(self, issue: Issue) -> None:
        self.issue_count += 1
        if len(self.issues) < self.max_issues:
            self.issues.append(issue)

    def format(self) -> str:
        lines = [str(issue) for issue in self.issues]
        hidden = self.issue_count - len(self.issues)
        if hidden > 0:
            lines.append(f"... and {hidden} more problem(s) not shown (limit {self.max_issues})")
        return "\n".join(lines)


class DataValidationError(ValueError):
    """Raised when training data has problems; its message lists them as FILE:LINE: FIELD: problem."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(f"{report.issue_count} problem(s) in the training data:\n{report.format()}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_record(
    record: object, train_group_size: int | None = None, require_teacher_scores: bool = False
) -> list[tuple[str, str]]:
    """Return ``(field, problem)`` pairs for one parsed JSON line; an empty list means it is valid."""
    if not isinstance(record, dict):
        return [("<line>", f"expected a JSON object, got {type(record).__name__}")]
    return [
        *_unknown_key_problems(record),
        *_query_problems(record),
        *_passage_problems(record),
        *_group_size_problems(record, train_group_size),
        *_teacher_score_problems(record, require_teacher_scores),
        *_prompt_problems(record),
    ]


def _unknown_key_problems(record: dict) -> list[tuple[str, str]]:
    """Keys outside the schema, most often a misspelt field."""
    return [
        (key, f"unknown key (known keys: {', '.join(KNOWN_FIELDS)})")
        for key in record
        if key not in KNOWN_FIELDS
    ]


def _query_problems(record: dict) -> list[tuple[str, str]]:
    if "query" not in record:
        return [("query", "missing")]
    query = record["query"]
    if not isinstance(query, str):
        return [("query", f"must be a string, got {type(query).__name__}")]
    if not query.strip():
        return [("query", "empty")]
    return []


def _passage_problems(record: dict) -> list[tuple[str, str]]:
    """``pos`` (required, at least one) and ``neg`` (optional): lists of non-empty strings."""
    problems: list[tuple[str, str]] = []
    for name in ("pos", "neg"):
        if name not in record:
            if name == "pos":
                problems.append(("pos", "missing"))
            continue
        passages = record[name]
        if not isinstance(passages, list):
            problems.append((name, f"must be a list of strings, got {type(passages).__name__}"))
            continue
        if name == "pos" and not passages:
            problems.append(("pos", "empty: each query needs at least one positive passage"))
        for i, passage in enumerate(passages):
            if not isinstance(passage, str):
                problems.append((f"{name}[{i}]", f"must be a string, got {type(passage).__name__}"))
            elif not passage.strip():
                problems.append((f"{name}[{i}]", "empty passage"))
    return problems


def _group_size_problems(record: dict, train_group_size: int | None) -> list[tuple[str, str]]:
    """A group of more than one passage needs a negative to fill it."""
    negatives = record.get("neg", [])
    if (train_group_size or 0) > 1 and isinstance(negatives, list) and not negatives:
        return [
            ("neg", f"no negatives, but train_group_size={train_group_size} needs at least one per query")
        ]
    return []


def _teacher_score_problems(record: dict, require_teacher_scores: bool) -> list[tuple[str, str]]:
    """Teacher scores: one finite number per passage, pos_scores with neg_scores, and present if required."""
    problems: list[tuple[str, str]] = []
    for score_name, passage_name in SCORE_FIELDS.items():
        if score_name not in record:
            continue
        scores = record[score_name]
        if not isinstance(scores, list):
            problems.append((score_name, f"must be a list of numbers, got {type(scores).__name__}"))
            continue
        passages = record.get(passage_name, [])
        if isinstance(passages, list) and len(scores) != len(passages):
            problems.append(
                (score_name, f"has {len(scores)} score(s) for {len(passages)} {passage_name} passage(s)")
            )
        for i, score in enumerate(scores):
            if not _is_number(score):
                problems.append((f"{score_name}[{i}]", f"must be a number, got {score!r}"))
            elif not math.isfinite(score):
                problems.append((f"{score_name}[{i}]", f"must be finite, got {score}"))
    if ("pos_scores" in record) != ("neg_scores" in record) and record.get("neg"):
        present = "pos_scores" if "pos_scores" in record else "neg_scores"
        missing = "neg_scores" if present == "pos_scores" else "pos_scores"
        problems.append((missing, f"missing while {present} is given: teacher scores need both"))

    if require_teacher_scores and "pos_scores" not in record:
        problems.append(
            ("pos_scores", "missing, but the loss learns from a teacher: every query needs teacher scores")
        )
    return problems


def _prompt_problems(record: dict) -> list[tuple[str, str]]:
    prompt = record.get("prompt")
    if "prompt" in record and not (isinstance(prompt, str) and prompt.strip()):
        return [("prompt", "must be a non-empty string when given")]
    return []


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for the non-blank lines of a file, numbered from 1."""
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                yield number, text


def validate_files(
    paths: Iterable[str | Path],
    train_group_size: int | None = None,
    require_teacher_scores: bool = False,
    max_issues: int = 50,
) -> ValidationReport:
    """Read every line of every file and collect every problem (up to ``max_issues`` shown)."""
    report = ValidationReport(max_issues=max_issues)
    for path in map(Path, paths):
        try:
            lines = list(iter_lines(path))
        except UnicodeDecodeError as error:
            report.add(Issue(str(path), 0, "<file>", f"not UTF-8 text ({error.reason})"))
            continue
        if not lines:
            report.add(Issue(str(path), 0, "<file>", "no records: the file is empty"))
        for number, text in lines:
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                report.add(
                    Issue(
                        str(path), number, "<line>", f"not valid JSON ({error.msg} at column {error.colno})"
                    )
                )
                continue
            problems = check_record(record, train_group_size, require_teacher_scores)
            for field_name, message in problems:
                report.add(Issue(str(path), number, field_name, message))
            if problems:
                continue
            report.records += 1
            report.pos_counts.append(len(record["pos"]))
            report.neg_counts.append(len(record.get("neg", [])))
            report.with_teacher_scores += "pos_scores" in record
            report.with_prompt += "prompt" in record
    return report


def read_records(paths: Iterable[str | Path]) -> list[dict]:
    """Every record of files that `validate_files` passed, parsed line by line as it read them (a tool that
    rewrites records keeps their order and every field)."""
    return [json.loads(text) for path in map(Path, paths) for _, text in iter_lines(path)]
