"""Bad training data is reported as FILE:LINE: FIELD before any model is loaded, and exits non-zero."""

from __future__ import annotations

import pytest

from rerankforge.data_tools import DataValidationError, load_train_dataset
from rerankforge.data_tools.cli import main as data_main
from rerankforge.trainer.cli import main as train_main

GOOD = '{"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}'

# (bad line, field named in the message, words in the message)
BAD_LINES = [
    ('{"query": "q", "pos": ["p"]', "<line>", "not valid JSON"),
    ('["q", "p"]', "<line>", "expected a JSON object"),
    ('{"pos": ["p"], "neg": ["n"]}', "query", "missing"),
    ('{"query": "  ", "pos": ["p"], "neg": ["n"]}', "query", "empty"),
    ('{"query": 7, "pos": ["p"], "neg": ["n"]}', "query", "must be a string"),
    ('{"query": "q", "pos": [], "neg": ["n"]}', "pos", "empty"),
    ('{"query": "q", "neg": ["n"]}', "pos", "missing"),
    ('{"query": "q", "pos": "p", "neg": ["n"]}', "pos", "must be a list"),
    ('{"query": "q", "pos": ["p"], "neg": ["n", ""]}', "neg[1]", "empty passage"),
    ('{"query": "q", "pos": [null], "neg": ["n"]}', "pos[0]", "must be a string"),
    (
        '{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0], "neg_scores": [1, 2]}',
        "neg_scores",
        "has 2",
    ),
    (
        '{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [NaN], "neg_scores": [1]}',
        "pos_scores[0]",
        "finite",
    ),
    (
        '{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1], "neg_scores": [Infinity]}',
        "neg_scores[0]",
        "finite",
    ),
    ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1]}', "neg_scores", "missing"),
    ('{"query": "q", "pos": ["p"], "neg": ["n"], "passages": ["x"]}', "passages", "unknown key"),
    ('{"query": "q", "pos": ["p"], "neg": ["n"], "prompt": ""}', "prompt", "non-empty"),
]


@pytest.mark.parametrize(("line", "field", "words"), BAD_LINES, ids=[b[1] + ":" + b[2] for b in BAD_LINES])
def test_each_bad_line_is_named_by_file_line_and_field(tmp_path, capsys, line, field, words):
    path = tmp_path / "train.jsonl"
    path.write_text(f"{GOOD}\n{GOOD}\n{line}\n{GOOD}\n", encoding="utf-8")
    assert data_main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3: {field}: " in err
    assert words in err
    assert ":1:" not in err and ":2:" not in err and ":4:" not in err


def test_every_problem_is_reported_at_once_up_to_a_limit(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(["not json"] * 30) + "\n", encoding="utf-8")
    assert data_main(["check", str(path), "--max-issues", "5"]) == 1
    err = capsys.readouterr().err
    assert "30 problem(s)" in err
    assert f"{path}:5: <line>" in err and f"{path}:6: <line>" not in err
    assert "25 more problem(s) not shown" in err


def test_training_stops_on_bad_data_before_loading_any_model(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_text(f"{GOOD}\n" + '{"query": "q", "pos": ["p"]}\n', encoding="utf-8")
    # the model path does not exist: reaching the model would fail differently
    code = train_main(
        [
            "--model_name_or_path",
            str(tmp_path / "no-model"),
            "--train_data",
            str(path),
            "--train_group_size",
            "4",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"{path}:2: neg: no negatives, but train_group_size=4" in err
    assert not (tmp_path / "out").exists()


def test_distillation_requires_scores_on_every_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1], "neg_scores": [0]}\n' + GOOD + "\n",
        encoding="utf-8",
    )
    with pytest.raises(
        DataValidationError, match=r"train.jsonl:2: pos_scores: missing, but the loss learns from a teacher"
    ):
        load_train_dataset(path, require_teacher_scores=True)


def test_missing_path_is_an_error_not_a_skip(tmp_path, capsys):
    assert data_main(["check", str(tmp_path / "absent.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_check_prints_counts_and_token_lengths(capsys, minilm_path):
    from conftest import FE_TOY

    assert data_main(["check", str(FE_TOY / "example_data" / "normal"), "--tokenizer", minilm_path]) == 0
    out = capsys.readouterr().out
    assert "queries: 10" in out
    assert "negatives per query (min / median / max): 25 / 25 / 25" in out
    assert "over 512: 0.0%" in out
