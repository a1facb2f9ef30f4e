"""`Reranker` and `FlagReranker`: input order kept, single pairs give floats, FlagEmbedding's defaults."""

from __future__ import annotations

import json
import math

import pytest
import torch
from score_checks import assert_same_scores

from rerankforge.inference import FlagReranker, Reranker
from rerankforge.inference.modeling.pair_encoding import PairLengths
from rerankforge.inference.modeling.spec import CrossEncoderSpec, LayerwiseSpec, LLMSpec, RerankerSpec

QUERY = "what do women wear on the beach"
PASSAGES = [
    "flip flops",
    "Some women with flip-flops on are walking along the beach, " * 6,
    "a reform",
    "The 4 women are sitting on the beach in the sun and they wear hats and sandals",
    "sandals",
]
PAIRS = [[QUERY, p] for p in PASSAGES]


@pytest.fixture(scope="module")
def reranker(tiny_bert_dir):
    return Reranker.from_pretrained(str(tiny_bert_dir), device="cpu")


def test_folder_without_spec_uses_flag_reranker_defaults(reranker):
    assert reranker.lengths == PairLengths(query_max_len=384, passage_max_len=512, max_length=512)


def test_scores_come_back_in_input_order_whatever_the_lengths(reranker):
    one_by_one = [reranker.compute_score(pair) for pair in PAIRS]
    assert all(isinstance(s, float) for s in one_by_one)
    batched = reranker.compute_score(PAIRS, batch_size=2)
    assert_same_scores(batched, one_by_one)  # the fixture's scores spread: a shuffle is caught
    assert_same_scores(reranker.compute_score(PAIRS[::-1], batch_size=3), one_by_one[::-1])


def test_single_pair_gives_a_float_and_a_list_gives_a_list(reranker):
    assert isinstance(reranker.compute_score(("q", "p")), float)
    assert isinstance(reranker.compute_score([["q", "p"]]), list)
    assert reranker.compute_score([]) == []


def test_normalize_applies_a_sigmoid(reranker):
    raw = reranker.compute_score(PAIRS)
    assert reranker.compute_score(PAIRS, normalize=True) == pytest.approx(
        [1 / (1 + math.exp(-s)) for s in raw]
    )


def test_max_length_caps_the_pair(reranker):
    long_pair = [QUERY, PASSAGES[1]]
    assert reranker.compute_score(long_pair, max_length=8) != pytest.approx(reranker.compute_score(long_pair))
    features = reranker._encoder(reranker.lengths_for(8)).encode([QUERY], [PASSAGES[1]])
    assert len(features[0]["input_ids"]) == 8


def test_rank_returns_best_first_with_top_k(reranker):
    scores = reranker.compute_score(PAIRS)
    ranked = reranker.rank(QUERY, PASSAGES, top_k=3, return_documents=True)
    assert [r["corpus_id"] for r in ranked] == sorted(range(5), key=lambda i: -scores[i])[:3]
    assert ranked[0]["text"] == PASSAGES[ranked[0]["corpus_id"]]
    assert ranked[0]["score"] == pytest.approx(1 / (1 + math.exp(-max(scores))))  # predict's sigmoid


def test_flag_reranker_matches_flagembedding_behaviour(tiny_bert_dir, reranker):
    flag = FlagReranker(str(tiny_bert_dir), use_fp16=True, devices=["cpu"])
    assert flag.model.dtype == torch.float32  # fp16 falls back to fp32 on CPU
    assert_same_scores(flag.compute_score(PAIRS), reranker.compute_score(PAIRS))
    assert isinstance(flag.compute_score([PAIRS[0]]), float)  # FlagEmbedding returns a float for one score
    assert flag.compute_score(PAIRS[0], normalize=True) == pytest.approx(
        reranker.compute_score(PAIRS[0], normalize=True), abs=1e-6
    )
    instructed = FlagReranker(str(tiny_bert_dir), query_instruction_for_rerank="Q: ", devices="cpu")
    assert instructed.compute_score(PAIRS[0]) == pytest.approx(
        reranker.compute_score(["Q: " + QUERY, PASSAGES[0]])
    )


def test_flag_reranker_keeps_the_trained_budgets_of_our_checkpoints(tmp_path, tiny_bert_dir):
    import shutil

    folder = tmp_path / "ours"
    shutil.copytree(tiny_bert_dir, folder)
    CrossEncoderSpec(query_max_len=8, passage_max_len=16, max_length=27).save(folder)
    flag = FlagReranker(str(folder), devices="cpu")
    ours = Reranker.from_pretrained(str(folder), device="cpu")
    assert flag.flag_lengths(None, None) == ours.lengths == PairLengths(8, 16, 27)
    assert_same_scores(flag.compute_score(PAIRS), ours.compute_score(PAIRS))
    assert flag.flag_lengths(None, 64) == PairLengths(48, 64, 64)  # explicit lengths: FlagEmbedding's rule


def test_rank_with_one_passage_works_for_both_classes(tiny_bert_dir, reranker):
    flag = FlagReranker(str(tiny_bert_dir), devices="cpu", normalize=True)  # rank applies its own sigmoid
    for model in (reranker, flag):
        (only,) = model.rank(QUERY, [PASSAGES[0]])
        assert only["corpus_id"] == 0 and only["score"] == pytest.approx(
            reranker.compute_score(PAIRS[0], normalize=True), abs=1e-6
        )


def test_a_folder_of_another_family_is_refused(tmp_path, tiny_bert_dir):
    import shutil

    folder = tmp_path / "llm"
    shutil.copytree(tiny_bert_dir, folder)
    LLMSpec(query_max_len=32, passage_max_len=128, max_length=160, yes_token_id=5).save(folder)
    with pytest.raises(ValueError, match="holds a 'llm' reranker"):
        Reranker.from_pretrained(str(folder))


SPECS = [
    CrossEncoderSpec(query_max_len=32, passage_max_len=224, max_length=256, base_model="m"),
    LLMSpec(query_max_len=32, passage_max_len=128, max_length=160, yes_token_id=5, score="yes_minus_no",
            no_token_id=6, adapter=True, loss={"loss": {"name": "kl", "temperature": 2.0}}),
    LayerwiseSpec(query_max_len=8, passage_max_len=16, max_length=24, yes_token_id=5, layers=[2, 3], num_layers=3),
]  # fmt: skip


@pytest.mark.parametrize("spec", SPECS, ids=[s.family for s in SPECS])
def test_each_familys_spec_round_trips_typed(tmp_path, spec):
    spec.save(tmp_path)
    loaded = RerankerSpec.load(tmp_path)
    assert loaded == spec and type(loaded) is type(spec)
    assert json.loads((tmp_path / "rerankforge.json").read_text())["version"] == 2


def test_spec_errors_name_the_file_and_what_is_wrong(tmp_path):
    path = tmp_path / "rerankforge.json"
    for text, message in [
        ('{"version": 99, "family": "x"}', "version 99"),
        ('{"version": 2, "family": "bi_encoder"}', "unknown family 'bi_encoder'"),
        ('{"version": 2, "family": "cross_encoder", "query_max_len": 1, "passage_max_len": 1, "max_length": 2,'
         ' "prompt": "p"}', "unknown key\\(s\\) prompt for family 'cross_encoder'"),
        ('{"version": 2, "family": "llm", "query_max_len": 1, "passage_max_len": 1, "max_length": 2}',
         "yes_token_id"),
    ]:  # fmt: skip
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            RerankerSpec.load(tmp_path)
        assert str(path) in str(pytest.raises(ValueError, RerankerSpec.load, tmp_path).value)
    assert RerankerSpec.load(tmp_path / "missing") is None


def test_a_version_1_spec_with_its_extra_dict_loads_into_the_typed_class(tmp_path):
    (tmp_path / "rerankforge.json").write_text(json.dumps({
        "version": 1, "family": "llm", "query_max_len": 32, "passage_max_len": 128, "max_length": 160,
        "base_model": "b", "extra": {"prompt": "P", "score": "yes", "yes_token": "Yes", "yes_token_id": 9,
                                     "no_token": "No", "no_token_id": None, "adapter": True},
    }))  # fmt: skip
    spec = RerankerSpec.load(tmp_path)
    assert spec == LLMSpec(query_max_len=32, passage_max_len=128, max_length=160, base_model="b", prompt="P",
                           yes_token_id=9, adapter=True)  # fmt: skip
