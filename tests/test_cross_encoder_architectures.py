"""Cross-encoder architectures beyond BERT and XLM-R: ModernBERT (no token type ids, its own attention path),
DeBERTa-v2/v3 and ELECTRA train the toy task, save, and score as the training model does."""

from __future__ import annotations

import pytest
import torch
from conftest import write_jsonl
from score_checks import assert_same_scores
from test_cross_encoder_training import build, make_config, toy_records

from rerankforge.inference import Reranker


def tiny_model_folder(tmp_path, architecture: str, minilm_path: str):
    """A 2-layer, hidden-32 model of ``architecture`` with random weights and MiniLM's WordPiece vocabulary
    (ModernBERT's tokenizer gives no token type ids, as its own does)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1,
                max_position_embeddings=512, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    if architecture == "modernbert":
        from transformers import ModernBertConfig, ModernBertForSequenceClassification

        config = ModernBertConfig(**size, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                                  bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)  # fmt: skip
        model = ModernBertForSequenceClassification(config)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer.backend_tokenizer, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
            unk_token="[UNK]", mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"],
        )  # fmt: skip
    elif architecture == "deberta-v2":
        from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

        model = DebertaV2ForSequenceClassification(DebertaV2Config(**size, type_vocab_size=2, relative_attention=True,
                                                                   position_buckets=64, pos_att_type=["p2c", "c2p"]))  # fmt: skip
    else:
        from transformers import ElectraConfig, ElectraForSequenceClassification

        model = ElectraForSequenceClassification(ElectraConfig(**size, embedding_size=32))
    folder = tmp_path / f"tiny-{architecture}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("architecture", ["modernbert", "deberta-v2", "electra"])
def test_each_architecture_trains_saves_and_scores_as_the_training_model(tmp_path, minilm_path, architecture):
    folder = tiny_model_folder(tmp_path, architecture, minilm_path)
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(16))
    config = make_config(tmp_path, folder, data, num_train_epochs=4, learning_rate=5e-3)
    trainer = build(config)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert ("token_type_ids" in batch) == (architecture != "modernbert")  # each tokenizer's own inputs
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) > len(before) // 2  # the encoder trained, not only the head
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4  # the toy task is learnt
    trainer.save_model(config.training.output_dir)

    groups = [trainer.train_dataset[i] for i in range(4)]
    pairs = [[g.query, p] for g in groups for p in g.passages]
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.model.score(trainer.data_collator(groups)).tolist()
    reranker = Reranker.from_pretrained(config.training.output_dir, device="cpu")
    assert_same_scores(reranker.compute_score(pairs, batch_size=5), trained)
