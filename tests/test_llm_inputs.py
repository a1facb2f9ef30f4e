"""LLM reranker input format and "Yes"-logit score, on tiny random Llama, Qwen2 and Gemma2 decoders."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_decoder

from rerankforge.inference.modeling.llm import score_last_token, single_token_id
from rerankforge.inference.modeling.llm_inputs import DEFAULT_PROMPT, LLMPromptEncoder


@pytest.fixture(scope="module")
def tokenizer(llm_tokenizer):
    return llm_tokenizer


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_input_ids_follow_the_bge_layout_token_for_token(tokenizer):
    encoder = LLMPromptEncoder(tokenizer, query_max_len=64, passage_max_len=64)
    (sequence,) = encoder.encode(["what do women wear"], ["Some women walk."])
    newline = ids(tokenizer, "\n")
    expected = (
        [tokenizer.bos_token_id] + ids(tokenizer, "A: what do women wear") + newline
        + ids(tokenizer, "B: Some women walk.") + newline + ids(tokenizer, DEFAULT_PROMPT)
    )  # fmt: skip
    assert sequence == expected


def test_query_and_passage_are_cut_but_the_prompt_never_is(tokenizer):
    encoder = LLMPromptEncoder(tokenizer, query_max_len=5, passage_max_len=7)
    long_text = "The 4 women are sitting on the beach. " * 20
    (sequence,) = encoder.encode([long_text], [long_text], prompts=["Is it relevant? Yes or No"])
    newline = ids(tokenizer, "\n")
    prompt = ids(tokenizer, "Is it relevant? Yes or No")
    assert sequence[: 1 + 5] == [tokenizer.bos_token_id] + ids(tokenizer, f"A: {long_text}")[:5]
    assert sequence[6 : 6 + len(newline)] == newline
    passage_start = 6 + len(newline)
    assert sequence[passage_start : passage_start + 7] == ids(tokenizer, f"B: {long_text}")[:7]
    assert sequence[-len(prompt) :] == prompt  # the per-example prompt replaces the default, whole
    assert len(sequence) == 1 + 5 + len(newline) + 7 + len(newline) + len(prompt)


def test_left_padding_puts_every_last_real_token_in_the_last_column(tokenizer):
    encoder = LLMPromptEncoder(tokenizer, query_max_len=32, passage_max_len=32)
    sequences = encoder.encode(["a", "a much longer query about the beach"], ["b", "c"])
    batch = encoder.pad_left(sequences)
    assert batch["input_ids"].shape[1] % 8 == 0
    for row, sequence in enumerate(sequences):
        assert batch["input_ids"][row, -len(sequence) :].tolist() == sequence
        assert batch["attention_mask"][row].sum().item() == len(sequence)
        assert batch["attention_mask"][row, -1].item() == 1
        assert set(batch["input_ids"][row, : -len(sequence)].tolist()) <= {tokenizer.pad_token_id}


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma", "gemma2", "gemma3", "mistral"])
def test_score_is_the_yes_logit_at_the_last_real_token(tokenizer, architecture):
    model = tiny_decoder(architecture, len(tokenizer))
    encoder = LLMPromptEncoder(tokenizer, query_max_len=32, passage_max_len=48)
    yes, no = single_token_id(tokenizer, "Yes"), single_token_id(tokenizer, "No")
    sequences = encoder.encode(
        ["a", "what do women wear on the beach"], ["b", "Some women with flip-flops on."]
    )
    with torch.no_grad():
        scores = score_last_token(model, encoder.pad_left(sequences), yes)
        alone = [model(input_ids=torch.tensor([s])).logits[0, -1].float() for s in sequences]
        log_odds = score_last_token(model, encoder.pad_left(sequences), yes, no, mode="yes_minus_no")
    assert scores.dtype == torch.float32
    assert scores.tolist() == pytest.approx([logits[yes].item() for logits in alone], abs=1e-4)
    assert log_odds.tolist() == pytest.approx([(lg[yes] - lg[no]).item() for lg in alone], abs=1e-4)


def test_answer_word_must_be_one_token(tokenizer):
    assert tokenizer.convert_ids_to_tokens([single_token_id(tokenizer, "Yes")]) == ["Yes"]
    with pytest.raises(ValueError, match=r"'Absolutely' is \d+ tokens for this tokenizer"):
        single_token_id(tokenizer, "Absolutely")
