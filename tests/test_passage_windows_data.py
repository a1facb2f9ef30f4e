"""Long passages in training data and evaluation: `passage_windows` cuts each long passage to one window
(BM25's, the teacher's or the first), `rerankforge-data window` / `check --window` run it, and `long-docs`
builds a BEIR folder of long documents from SQuAD's held-out articles. Real SQuAD text, MiniLM's tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED_DATA, write_jsonl
from transformers import AutoTokenizer

from rerankforge.data_tools.cli import main as data_main
from rerankforge.data_tools.ir_data import load_ir_split, squad_paragraphs
from rerankforge.data_tools.long_documents import build_long_documents, document_text
from rerankforge.data_tools.passage_windows import cut_to_windows
from rerankforge.data_tools.teacher_scoring import load_teacher
from rerankforge.inference.auto import load_reranker
from rerankforge.inference.long_passages import split_passage

SQUAD = SHARED_DATA / "squad-v1.1" / "dev-v1.1.json"
WINDOW, STRIDE = 128, 64
QUESTION, ANSWER = (
    "Who was the NFL Commissioner in early 2012?",
    "Roger Goodell",
)  # in Super Bowl 50's 5th paragraph


@pytest.fixture(scope="module")
def articles() -> list[dict]:
    return json.loads(SQUAD.read_text(encoding="utf-8"))["data"]


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def records(articles) -> list[dict]:
    """A long positive (five paragraphs, ~480 tokens) whose answer is in its last paragraph, a short and a
    long negative, teacher scores on every passage; and a record of short passages only."""
    contexts = [p["context"] for p in articles[0]["paragraphs"][:5]]
    other = [p["context"] for p in articles[1]["paragraphs"][:4]]
    return [
        {
            "query": QUESTION,
            "pos": ["\n\n".join(contexts)],
            "neg": [other[0], "\n\n".join(other[1:])],
            "pos_scores": [1.0],
            "neg_scores": [0.5, 0.25],
        },
        {"query": "What is a short question?", "pos": [contexts[1]], "neg": [other[0]], "prompt": "Judge."},
    ]


def test_bm25_keeps_the_late_window_with_the_answer_and_first_keeps_window_0(records, tokenizer):
    long_positive = records[0]["pos"][0]
    windows = split_passage(tokenizer, long_positive, WINDOW, STRIDE)
    assert len(windows) > 3

    cut, report = cut_to_windows(records, tokenizer, WINDOW, STRIDE, choose="bm25")
    kept = windows.index(cut[0]["pos"][0])
    assert kept == len(windows) - 1 and ANSWER in cut[0]["pos"][0]
    assert (report.long["pos"], report.long["neg"], report.passages["pos"], report.passages["neg"]) == (
        1,
        1,
        2,
        3,
    )
    assert report.kept[kept] >= 1 and report.to_dict()["kept_window"][str(kept)] >= 1
    assert report.stale_scores == 2  # the two cut passages' teacher scores were the whole passages'
    assert any(f"{kept}: " in line for line in report.lines())

    first, first_report = cut_to_windows(records, tokenizer, WINDOW, STRIDE, choose="first")
    assert first[0]["pos"][0] == windows[0] and first_report.kept == {0: 2} and first_report.not_first == 0

    for out in (cut, first):  # nothing dropped, order kept; short passages, scores and other fields unchanged
        assert [len(r["pos"]) for r in out] == [1, 1] and [len(r["neg"]) for r in out] == [2, 1]
        assert out[0]["neg"][0] == records[0]["neg"][0] and out[1] == records[1]
        assert out[0]["pos_scores"] == [1.0] and out[0]["neg_scores"] == [0.5, 0.25]
        assert out[0]["neg"][1] in split_passage(tokenizer, records[0]["neg"][1], WINDOW, STRIDE)
    assert records[0]["pos"][0] == long_positive  # the input is not changed


def test_the_teacher_keeps_its_best_window_and_its_score(records, tokenizer, tiny_bert_dir):
    teacher = load_teacher(str(tiny_bert_dir), "cpu", torch.float32, 16, None)
    cut, report = cut_to_windows(records, tokenizer, WINDOW, STRIDE, choose="teacher", teacher=teacher)
    reranker = load_reranker(str(tiny_bert_dir), device="cpu")
    for name, position in (("pos", 0), ("neg", 1)):
        windows = split_passage(tokenizer, records[0][name][position], WINDOW, STRIDE)
        scores = reranker.compute_score([(QUESTION, w) for w in windows], batch_size=4)
        best = max(range(len(scores)), key=scores.__getitem__)
        assert cut[0][name][position] == windows[best]
        assert cut[0][f"{name}_scores"][position] == pytest.approx(scores[best], abs=1e-4)
    assert cut[0]["neg_scores"][0] == 0.5 and cut[1] == records[1]  # uncut: unchanged
    assert report.chooser == "teacher" and report.stale_scores == 0 and sum(report.kept.values()) == 2


def test_window_cli_writes_records_and_report_and_names_a_bad_line(records, tmp_path, minilm_path, capsys):
    source = write_jsonl(tmp_path / "train.jsonl", records)
    output = tmp_path / "windowed.jsonl"
    argv = ["window", str(source), str(output), "--tokenizer", minilm_path, "--window", str(WINDOW)]
    assert data_main([*argv, "--stride", str(STRIDE)]) == 0
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(written) == 2 and written[1] == records[1] and ANSWER in written[0]["pos"][0]
    report = json.loads((tmp_path / "windowed.jsonl.windows.json").read_text())
    assert report["chooser"] == "bm25" and report["longer_than_window"] == {"pos": 1, "neg": 1}
    assert sum(report["kept_window"].values()) == 2
    printed = capsys.readouterr().out
    assert "longer than 128 tokens: pos 1, neg 1" in printed and "chosen by bm25" in printed

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(records[0]) + "\n" + json.dumps({"query": "q", "neg": ["n"]}) + "\n")
    assert data_main(["window", str(bad), str(tmp_path / "never.jsonl"), *argv[3:]]) == 1
    assert f"{bad}:2: pos: missing" in capsys.readouterr().err and not (tmp_path / "never.jsonl").exists()
    assert data_main([*argv, "--choose", "teacher"]) == 2  # a teacher chooser needs a teacher
    assert "--teacher" in capsys.readouterr().err


def test_check_counts_the_passages_longer_than_the_window(records, tmp_path, minilm_path, capsys):
    source = write_jsonl(tmp_path / "train.jsonl", records)
    assert data_main(["check", str(source), "--tokenizer", minilm_path, "--window", str(WINDOW)]) == 0
    printed = capsys.readouterr().out
    assert (
        "longer than 128 tokens: pos 1, neg 1" in printed
        and "chosen by bm25 (window index: passages)" in printed
    )
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]  # nothing written


def test_long_docs_joins_whole_held_out_paragraphs_and_rerankforge_eval_reads_them(
    articles, tokenizer, minilm_path, tmp_path, capsys
):
    low, high = 600, 1000

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    folder = tmp_path / "squad-long"
    assert data_main(["long-docs", str(SQUAD), str(folder), "--tokenizer", minilm_path]) == 0
    assert "documents" in capsys.readouterr().out
    dataset, documents = build_long_documents(SQUAD, count, low, high)
    held_out = load_ir_split(
        SQUAD, "test"
    )  # what `rerankforge-eval --data dev-v1.1.json --split test` evaluates
    paragraphs = {doc_id: (title, p["context"]) for doc_id, title, p in squad_paragraphs(articles)}

    members = [
        doc.passage_ids for doc in documents
    ]  # only held-out paragraphs, each in one document, in order
    assert sorted(p for ids in members for p in ids) == sorted(held_out.corpus)
    titles = {paragraphs[p][0] for p in held_out.corpus}
    assert {paragraphs[ids[0]][0] for ids in members} == titles and len(titles) < len(articles)

    loaded = load_ir_split(folder, "test")  # the eval CLI's loader reads the folder
    assert loaded.corpus == dataset.corpus and loaded.queries == held_out.queries
    texts = list(loaded.corpus.values())
    for doc_id, (_, context) in paragraphs.items():  # no paragraph cut: whole, in exactly one document
        assert sum(context.strip() in text for text in texts) == (doc_id in held_out.corpus)
    for query_id, judged in held_out.qrels.items():
        (passage,) = judged
        (document,) = loaded.qrels[query_id]
        assert paragraphs[passage][1].strip() in loaded.corpus[document]

    by_title: dict[str, list] = {}
    for doc in documents:
        by_title.setdefault(doc.title, []).append(doc)
    for group in by_title.values():
        for index, doc in enumerate(group):
            assert doc.tokens == count(doc.text)
            if doc.tokens > high:
                assert len(doc.passage_ids) == 1  # one passage longer than the maximum stands alone
            if doc.tokens < low and index + 1 < len(group):  # closed short: the next passage would not fit
                following = paragraphs[group[index + 1].passage_ids[0]][1]
                assert (
                    count(document_text(doc.title, [paragraphs[p][1] for p in doc.passage_ids] + [following]))
                    > high
                )
            if doc.tokens < low and index + 1 == len(group) and index > 0:  # a remainder that could not join
                joined = [paragraphs[p][1] for p in group[index - 1].passage_ids + doc.passage_ids]
                assert count(document_text(doc.title, joined)) > high
    assert sum(low <= doc.tokens <= high for doc in documents) > 0.9 * len(documents)
