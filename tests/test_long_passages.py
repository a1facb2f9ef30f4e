"""Long passages: windows cover every token as the stride says, a passage of one window scores as today, MaxP finds
a relevant paragraph that truncation never reads (on a model trained here), results do not depend on what else is
in the call, the token budget holds, and a served export gives the same MaxP when the client sends the windows.
Real tiny models and the real MiniLM tokenizer, no mocks."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from conftest import write_jsonl
from test_cross_encoder_training import WORDS, build, make_config
from test_evaluation import beir_slice  # noqa: F401 - fixture: a slice of CISI as a BEIR folder
from test_inference_api import cross_encoder, layerwise, llm  # noqa: F401 - fixtures
from transformers import AutoTokenizer

from rerankforge.inference import Reranker
from rerankforge.inference.long_passages import (
    LongPassages,
    save_long_passages,
    split_passage,
    token_offsets,
    window_spans,
    window_texts,
)
from rerankforge.inference.modeling.spec import CrossEncoderSpec

FAMILIES = ["cross_encoder", "llm", "layerwise"]
FILLER_WORDS = [
    "the",
    "weather",
    "was",
    "mild",
    "that",
    "year",
    "and",
    "the",
    "town",
    "held",
    "its",
    "market",
    "on",
    "the",
    "square",
    "every",
    "week",
]


def filler(tokens: int, seed: int = 0) -> str:
    """Plain words none of the toy queries ask about (each one WordPiece token in MiniLM's vocabulary)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(FILLER_WORDS) for _ in range(tokens))


def distractors(sentences: int, word: str, seed: int = 0) -> str:
    """What the toy task taught the model is not relevant: other words, "is there ... maybe"."""
    rng = random.Random(seed)
    others = [w for w in WORDS if w != word]
    return " ".join(
        f"the {rng.choice(others)} is there, {rng.choice(others)} maybe." for _ in range(sentences)
    )


@pytest.fixture(params=FAMILIES)
def reranker(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize("length", [1, 7, 8, 9, 15, 16, 17, 100, 2001])
@pytest.mark.parametrize(("window", "stride"), [(8, 4), (8, 8), (8, 1), (5, 3), (16, 8)])
def test_windows_cover_every_token_exactly_as_the_stride_says(length, window, stride):
    spans = window_spans(length, window, stride)
    assert spans[0][0] == 0 and spans[-1][1] == length  # first and last windows included
    assert [start for start, _ in spans] == [i * stride for i in range(len(spans))]
    assert (
        all(end - start == window for start, end in spans[:-1]) and 0 < spans[-1][1] - spans[-1][0] <= window
    )
    covered = sorted({t for start, end in spans for t in range(start, end)})
    assert covered == list(range(length))
    if length <= window:
        assert spans == [(0, length)]
    else:  # no window more than needed: the one before the last did not reach the end
        assert spans[-2][1] < length


def test_window_texts_are_the_tokens_of_their_span(minilm_path):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    passage = "Tokenization, windows and strides: " + filler(300) + " the final words of the passage."
    offsets = token_offsets(tokenizer, [passage])[0]
    ids = tokenizer(passage, add_special_tokens=False)["input_ids"]
    texts = window_texts(passage, offsets, 64, 24)
    spans = window_spans(len(ids), 64, 24)
    assert len(texts) == len(spans) > 1
    for text, (start, end) in zip(texts, spans, strict=True):
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids[start:end]
    assert texts == split_passage(tokenizer, passage, 64, 24)
    assert split_passage(tokenizer, "short passage", 64) == ["short passage"]


def test_settings_are_checked_and_resolved():
    with pytest.raises(ValueError, match="one of"):
        LongPassages("best")
    with pytest.raises(ValueError, match="never be scored"):
        LongPassages("maxp", window=8, stride=9)
    saved = LongPassages("meanp", window=100, stride=50, top_k=2)
    assert LongPassages.resolve(saved) == saved
    assert LongPassages.resolve(saved, "maxp") == LongPassages("maxp", 100, 50, 2)  # a name keeps the windows
    assert LongPassages.resolve(saved, None, window=40, stride=10) == LongPassages("meanp", 40, 10, 2)
    assert LongPassages.from_dict(saved.to_dict()) == saved


# ---------------------------------------------------------------------------------------------------------------
# scoring, every family


def test_a_passage_within_one_window_scores_as_truncation_does(reranker):
    pairs = [["where is the river", "the river is here, river indeed"], ["where is the stone", "a stone"]]
    truncated = reranker.compute_score(pairs, long_passages="truncate")
    for mode in ("firstp", "maxp", "meanp"):
        scores, windows = reranker.compute_score(pairs, long_passages=mode, return_windows=True)
        assert windows == [1, 1]
        assert scores == truncated  # the same text, the same batch: the same numbers


def test_modes_aggregate_the_windows_scores(reranker):
    """maxp, firstp and meanp equal the max, first and top-k mean of each window scored on its own."""
    passage = filler(60, seed=1) + " the river is here, river indeed " + filler(60, seed=2)
    query = "where is the river"
    windows = split_passage(reranker.tokenizer, passage, 24, 10)
    alone = reranker.compute_score([[query, w] for w in windows], long_passages="truncate")
    best3 = sorted(alone, reverse=True)[:3]
    for mode, expected in (("maxp", max(alone)), ("firstp", alone[0]), ("meanp", sum(best3) / 3)):
        score, count = reranker.compute_score((query, passage), long_passages=mode, window=24, stride=10,
                                              return_windows=True)  # fmt: skip
        assert score == pytest.approx(expected, abs=1e-5)
        assert count == (1 if mode == "firstp" else len(windows))


def test_windowed_scores_do_not_depend_on_the_rest_of_the_call(reranker):
    rng = random.Random(3)
    pairs = [
        (
            f"where is the {rng.choice(WORDS)}",
            filler(rng.randint(5, 150), seed=i) + f" the {rng.choice(WORDS)} is here",
        )
        for i in range(10)
    ]
    together = reranker.compute_score(pairs, long_passages="maxp", window=20, stride=7, batch_size=5)
    alone = [reranker.compute_score([pair], long_passages="maxp", window=20, stride=7)[0] for pair in pairs]
    assert together == pytest.approx(alone, abs=1e-6)
    reordered = reranker.compute_score(pairs[::-1], long_passages="maxp", window=20, stride=7, batch_size=3)
    assert reordered[::-1] == pytest.approx(together, abs=1e-6)


def test_layerwise_aggregates_each_layer_on_its_own(layerwise):  # noqa: F811
    passage = filler(90, seed=4)
    query = "where is the apple"
    windows = split_passage(layerwise.tokenizer, passage, 16, 8)
    per_layer = layerwise.compute_score([[query, w] for w in windows], cutoff_layers=[1, 2])
    got = layerwise.compute_score([(query, passage)], cutoff_layers=[1, 2], long_passages="maxp", window=16,
                                  stride=8)  # fmt: skip
    assert [layer[0] for layer in got] == pytest.approx([max(per_layer[0]), max(per_layer[1])], abs=1e-5)
    assert per_layer[0] != per_layer[1]


def test_normalize_applies_after_aggregation(cross_encoder):  # noqa: F811
    pair = ("where is the river", filler(200) + " the river is here")
    raw = cross_encoder.compute_score(pair, long_passages="meanp", window=30)
    probability = cross_encoder.compute_score(pair, long_passages="meanp", window=30, normalize=True)
    assert probability == pytest.approx(
        torch.sigmoid(torch.tensor(raw, dtype=torch.float64)).item(), abs=1e-7
    )


def test_the_token_budget_holds_with_windows(tiny_bert_dir):
    reranker = Reranker.from_pretrained(str(tiny_bert_dir), device="cpu", backend="torch")
    shapes = []
    handle = reranker.model.backbone.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    pairs = [("where is the stone", filler(n, seed=n)) for n in (10, 400, 45, 900, 3, 260)]
    try:
        reranker.compute_score(pairs, long_passages="maxp", window=60, stride=30, batch_size=64,
                               max_length=128, max_batch_tokens=256)  # fmt: skip
    finally:
        handle.remove()
    assert sum(rows for rows, _ in shapes) > len(pairs)  # windows were scored
    assert all(rows * width <= 256 for rows, width in shapes), shapes
    assert (
        len(shapes) > 1 and max(width for _, width in shapes) <= 60 + 4 + 8
    )  # one window + query + specials


def test_saved_settings_are_the_default_and_a_call_overrides_them(tmp_path, tiny_bert_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    CrossEncoderSpec(query_max_len=16, passage_max_len=32, max_length=64, base_model="tiny").save(folder)
    pair = ("where is the river", filler(300) + " the river is here, river indeed")
    plain = Reranker.from_pretrained(str(folder), device="cpu", backend="torch")
    maxp = plain.compute_score(pair, long_passages="maxp", window=40)
    save_long_passages(str(folder), LongPassages("maxp", window=40))
    saved = Reranker.from_pretrained(str(folder), device="cpu", backend="torch")
    assert saved.compute_score(pair) == pytest.approx(maxp, abs=1e-6)
    assert saved.predict([pair])[0] == pytest.approx(torch.sigmoid(torch.tensor(maxp)).item(), abs=1e-6)
    assert saved.rank(pair[0], [pair[1]])[0]["score"] == pytest.approx(saved.predict([pair])[0], abs=1e-7)
    assert saved.compute_score(pair, long_passages="truncate") == pytest.approx(
        plain.compute_score(pair), abs=1e-6
    )
    assert json.loads((folder / "rerankforge.json").read_text())["long_passages"]["mode"] == "maxp"


# ---------------------------------------------------------------------------------------------------------------
# on a trained model, and served


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory, tiny_bert_dir):
    """The tiny cross-encoder trained (real Trainer) on a toy task: the positive holds "the {word} is here" among
    sentences like the negatives' ("the {other} is there, ... maybe")."""
    tmp_path = tmp_path_factory.mktemp("trained-long")
    rng = random.Random(0)
    records = []
    for i in range(24):
        word = WORDS[i % len(WORDS)]
        relevant = f"the {word} is here, {word} indeed."
        records.append({
            "query": f"where is the {word}",
            "pos": [" ".join([distractors(rng.randint(0, 2), word, seed=i), relevant, distractors(rng.randint(0, 1), word)])],
            "neg": [distractors(3, word, seed=100 * i + n) for n in range(6)],
        })  # fmt: skip
    data = write_jsonl(tmp_path / "train.jsonl", records)
    trainer = build(make_config(tmp_path, tiny_bert_dir, data, num_train_epochs=6, learning_rate=5e-3))
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    return tmp_path / "model"


def test_maxp_finds_a_relevant_paragraph_after_2000_tokens_of_filler(trained_folder):
    """2,000 tokens of what the model learned to call irrelevant, then the relevant sentence."""
    reranker = Reranker.from_pretrained(str(trained_folder), device="cpu", backend="torch")
    wins = 0
    for word in WORDS[:6]:
        passage = distractors(250, word, seed=len(word)) + f" the {word} is here, {word} indeed"
        assert len(reranker.tokenizer(passage, add_special_tokens=False)["input_ids"]) > 2000
        query = f"where is the {word}"
        truncated = reranker.compute_score((query, passage), long_passages="truncate")
        maxp, windows = reranker.compute_score((query, passage), long_passages="maxp", return_windows=True)
        paragraph_alone = reranker.compute_score((query, f"the {word} is here, {word} indeed"))
        assert windows > 50  # the default window is the 32-token passage budget, stride 16
        assert maxp > truncated + 1.0, (word, truncated, maxp)
        wins += maxp > truncated
        assert maxp >= paragraph_alone - 3.0  # the window holding it scores near the paragraph itself
    assert wins == 6


def test_a_served_export_gives_rerankforges_maxp_when_the_client_sends_the_windows(tmp_path, trained_folder):
    """What docs/export.md tells an engine's user: split with the export's tokenizer (`split_passage`), score
    every window (here sentence-transformers' CrossEncoder on the exported folder), keep the max."""
    from sentence_transformers import CrossEncoder

    from rerankforge.trainer.export import main as export_main

    out = tmp_path / "export"
    assert export_main([str(trained_folder), str(out)]) == 0
    reranker = Reranker.from_pretrained(str(trained_folder), device="cpu", backend="torch")
    served = CrossEncoder(str(out), device="cpu", model_kwargs={"dtype": torch.float32})
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    queries = [f"where is the {word}" for word in WORDS[:4]]  # passage i is relevant to query i alone (i odd)
    passages = [  # half of them hold what the toy task calls relevant, deep inside
        distractors(20 + 9 * i, WORDS[i], seed=i)
        + (f" the {WORDS[i]} is here, {WORDS[i]} indeed. " if i % 2 else " ")
        + distractors(5, WORDS[i])
        for i in range(4)
    ]
    pairs = [(q, p) for q in queries for p in passages]
    ours = reranker.compute_score(pairs, long_passages="maxp", window=28, stride=14, normalize=True)
    theirs = []
    for query, passage in pairs:
        windows = split_passage(tokenizer, passage, 28, 14)
        theirs.append(float(max(served.predict([(query, w) for w in windows]))))
    assert theirs == pytest.approx(ours, abs=1e-5)
    assert max(ours) - min(ours) > 0.3  # the scores differ: the comparison could fail


# ---------------------------------------------------------------------------------------------------------------
# rerankforge-eval


def test_eval_scores_windows_reports_their_cost_and_stores_the_mode(
    tmp_path,
    capsys,
    trained_folder,
    beir_slice,  # noqa: F811
):
    """On real CISI documents (abstracts of 100-300 tokens) with 32-token windows: the reranked run is the maxp
    scores, metrics.json says how many windows and how fast, and --save-long-passages makes maxp the default."""
    from rerankforge.data_tools.ir_data import load_beir
    from rerankforge.data_tools.retrieval import read_trec_run
    from rerankforge.trainer.eval_cli import main as eval_main

    folder = tmp_path / "model"
    shutil.copytree(trained_folder, folder)
    data = beir_slice
    out = tmp_path / "eval"
    code = eval_main(["--model", str(folder), "--data", str(data), "--split", "test", "--top-k", "5", "--device",
                      "cpu", "--output", str(out), "--long-passages", "maxp", "--window", "32", "--stride", "16",
                      "--save-long-passages"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "long passages: maxp: windows of 32 tokens, stride 16 tokens" in printed
    result = json.loads((out / "metrics.json").read_text())
    assert result["long_passages"] == {"mode": "maxp", "window": 32, "stride": 16, "top_k": 3}
    assert (
        result["reranker_metrics"]["windows_per_pair"] > 3
        and result["reranker_metrics"]["pairs_per_second"] > 0
    )
    dataset = load_beir(data, "test")
    run = read_trec_run(out / "reranked.run")
    pairs = [(dataset.queries[q], dataset.corpus[d]) for q in sorted(run) for d in sorted(run[q])]
    expected = Reranker.from_pretrained(str(trained_folder), device="cpu", backend="torch").compute_score(
        pairs, long_passages="maxp", window=32, stride=16
    )
    written = [run[q][d] for q in sorted(run) for d in sorted(run[q])]
    assert written == pytest.approx(expected, abs=1e-4)
    assert json.loads((folder / "rerankforge.json").read_text())["long_passages"]["mode"] == "maxp"
    stored = Reranker.from_pretrained(str(folder), device="cpu", backend="torch")
    assert stored.compute_score(pairs[:3]) == pytest.approx(expected[:3], abs=1e-6)
