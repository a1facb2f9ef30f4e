"""Damaged or mismatched model folders give a `ModelFilesError` naming the file and what is wrong; valid folders of
every family still load and score."""

from __future__ import annotations

import json
import math
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file
from score_checks import assert_same_scores
from test_cross_encoder_training import toy_records

from rerankforge.inference import LayerwiseReranker, LLMReranker, Reranker
from rerankforge.inference.auto import load_reranker
from rerankforge.inference.modeling.file_checks import ModelFilesError, check_safetensors
from rerankforge.inference.modeling.folder_checks import check_model_folder
from rerankforge.inference.modeling.spec import CrossEncoderSpec, LLMSpec

PAIRS = [
    ["where is the apple", "the apple is here, apple indeed"],
    ["where is the apple", "the stone is there"],
]
CLASSES = {"cross_encoder": Reranker, "llm": LLMReranker, "layerwise": LayerwiseReranker}
FULL = {"ce": "cross_encoder", "llm": "llm", "layerwise": "layerwise"}  # folders with model.safetensors
ADAPTERS = {"llm_lora": "llm", "layerwise_lora": "layerwise"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_bert_dir, tiny_llm_dirs) -> dict[str, Path]:
    """One saved (untrained) folder of each family and layout, written by the trainers as a run would."""
    from rerankforge.data_tools import load_train_dataset
    from rerankforge.trainer.cross_encoder_config import CrossEncoderConfig
    from rerankforge.trainer.families import build_trainer
    from rerankforge.trainer.layerwise_config import LayerwiseRerankerConfig
    from rerankforge.trainer.llm_config import LLMRerankerConfig

    root = tmp_path_factory.mktemp("fault-folders")
    data = write_jsonl(root / "train.jsonl", toy_records(2))
    llama = tiny_llm_dirs("llama")
    common = dict(train_group_size=4, query_max_len=16, passage_max_len=32,
                  report_to="none", use_cpu=True, save_strategy="no")  # fmt: skip
    lora = dict(lora_rank=2, lora_alpha=4)
    configs = {
        "ce": CrossEncoderConfig(model_name_or_path=str(tiny_bert_dir), **common, output_dir=str(root / "ce")),
        "llm": LLMRerankerConfig(model_name_or_path=str(llama), use_lora=False, **common, output_dir=str(root / "llm")),
        "llm_lora": LLMRerankerConfig(model_name_or_path=str(llama), merge_lora=True, **lora, **common,
                                      output_dir=str(root / "llm_lora")),
        "layerwise": LayerwiseRerankerConfig(model_name_or_path=str(llama), start_layer=2, use_lora=False, **common,
                                             output_dir=str(root / "layerwise")),
        "layerwise_lora": LayerwiseRerankerConfig(model_name_or_path=str(llama), start_layer=2, **lora, **common,
                                                  output_dir=str(root / "layerwise_lora")),
    }  # fmt: skip
    for name, config in configs.items():
        trainer = build_trainer(config, load_train_dataset([str(data)], config.train_group_size))
        if name == "llm_lora":  # LoRA B starts at zero: an untrained adapter would score as its base does
            set_lora_b(trainer.model)
        trainer.save_model(config.output_dir)
        trainer.finish_saving(config.output_dir)
    found = {name: Path(config.output_dir) for name, config in configs.items()}
    return {**found, "llm_merged": found["llm_lora"] / "merged", "bert": tiny_bert_dir, "llama": llama}


def set_lora_b(model) -> None:
    """Every LoRA B matrix drawn from a seeded normal (std 0.2): the adapter then moves the scores by ~0.1."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def copy(folders: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folders[name], tmp_path / name))


def raised(load: Callable[[], object]) -> str:
    with pytest.raises(ModelFilesError) as caught:
        load()
    return str(caught.value)


def truncate(file: Path, cut: int = 100) -> None:
    with file.open("r+b") as handle:
        handle.truncate(file.stat().st_size - cut)


def read_header(raw: bytes) -> tuple[int, dict]:
    """A safetensors file's header length and header (the tensor data starts at ``8 + length``)."""
    (length,) = struct.unpack("<Q", raw[:8])
    return length, json.loads(raw[8 : 8 + length])


def rewrite_header(file: Path, change: Callable[[dict], None]) -> None:
    """``file`` with its header changed by ``change`` (the tensor data kept as it is)."""
    raw = file.read_bytes()
    length, header = read_header(raw)
    change(header)
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])


def last_tensor(header: dict) -> str:
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


# --- safetensors weights -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FULL))
def test_a_truncated_model_safetensors_is_named_with_both_sizes(folders, tmp_path, name):
    folder = copy(folders, name, tmp_path)
    file = folder / "model.safetensors"
    size = file.stat().st_size
    truncate(file)
    message = raised(lambda: CLASSES[FULL[name]].from_pretrained(str(folder), device="cpu"))
    assert message == (
        f"{file} is {size - 100} bytes, its header describes {size}: "
        "the file is truncated (an interrupted download or copy?)"
    )
    assert raised(lambda: load_reranker(str(folder), device="cpu")) == message


@pytest.mark.parametrize("name", list(FULL))
def test_a_header_that_no_longer_parses_is_named(folders, tmp_path, name):
    folder = copy(folders, name, tmp_path)
    file = folder / "model.safetensors"
    with file.open("r+b") as handle:  # inside the JSON header, right after its opening brace
        handle.seek(9)
        handle.write(b"\x00garbage\x00")
    message = raised(lambda: CLASSES[FULL[name]].from_pretrained(str(folder), device="cpu"))
    assert message.startswith(f"{file}: its header is not valid JSON (")
    assert message.endswith("the header was altered")


def test_a_header_length_beyond_the_file_is_named(folders, tmp_path):
    folder = copy(folders, "ce", tmp_path)
    file = folder / "model.safetensors"
    with file.open("r+b") as handle:
        handle.write(struct.pack("<Q", 10**9))
    assert "not a safetensors header length" in raised(lambda: Reranker.from_pretrained(str(folder)))
    with file.open("r+b") as handle:
        handle.write(struct.pack("<Q", file.stat().st_size))
    assert raised(lambda: Reranker.from_pretrained(str(folder))).startswith(
        f"{file} is {file.stat().st_size} bytes, its header alone needs {file.stat().st_size + 8}: the file is truncated"
    )


@pytest.mark.parametrize("name", ["ce", "llm"])
def test_offsets_that_point_beyond_the_file_are_named(folders, tmp_path, name):
    folder = copy(folders, name, tmp_path)
    file = folder / "model.safetensors"

    def beyond(header: dict) -> None:
        entry = header[last_tensor(header)]
        entry["data_offsets"] = [o + 10**6 for o in entry["data_offsets"]]

    rewrite_header(file, beyond)
    message = raised(lambda: CLASSES[FULL[name]].from_pretrained(str(folder), device="cpu"))
    assert message.startswith(f"{file}: tensor ")
    assert "beyond the file's" in message and message.endswith("the header was altered")


def test_a_shape_that_disagrees_with_its_offsets_is_named(folders, tmp_path):
    folder = copy(folders, "ce", tmp_path)
    file = folder / "model.safetensors"
    rewrite_header(file, lambda h: h[last_tensor(h)].update(shape=[7, 7]))
    message = raised(lambda: Reranker.from_pretrained(str(folder)))
    assert message.startswith(f"{file}: tensor ") and "F32 [7, 7] (196 bytes)" in message
    assert message.endswith("the header was altered")


def test_extra_bytes_after_the_data_are_named(folders, tmp_path):
    folder = copy(folders, "ce", tmp_path)
    file = folder / "model.safetensors"
    with file.open("ab") as handle:
        handle.write(b"\x00" * 10)
    assert "10 bytes too many" in raised(lambda: Reranker.from_pretrained(str(folder)))


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_a_truncated_adapter_is_named(folders, tmp_path, name):
    folder = copy(folders, name, tmp_path)
    file = folder / "adapter_model.safetensors"
    truncate(file)
    message = raised(lambda: CLASSES[ADAPTERS[name]].from_pretrained(str(folder), device="cpu"))
    assert message.startswith(f"{file} is ") and "the file is truncated" in message


def test_a_missing_adapter_file_is_named(folders, tmp_path):
    folder = copy(folders, "llm_lora", tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    assert raised(lambda: LLMReranker.from_pretrained(str(folder), device="cpu")) == (
        f"{folder / 'adapter_model.safetensors'} is missing: the folder has adapter_config.json but not the "
        "adapter's weights"
    )


def test_a_damaged_base_model_of_an_adapter_is_named(folders, tmp_path):
    folder = copy(folders, "llm_lora", tmp_path)
    base = copy(folders, "llama", tmp_path)
    spec = json.loads((folder / "rerankforge.json").read_text())
    (folder / "rerankforge.json").write_text(json.dumps({**spec, "base_model": str(base)}))
    truncate(base / "model.safetensors")
    message = raised(lambda: LLMReranker.from_pretrained(str(folder), device="cpu"))
    assert message.startswith(f"{base / 'model.safetensors'} is ") and "truncated" in message


def test_a_sharded_index_naming_a_missing_shard_names_both(tmp_path, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / "sharded"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).save_pretrained(
        folder, max_shard_size="1MB"
    )
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    expected = Reranker.from_pretrained(str(tiny_bert_dir), device="cpu").compute_score(PAIRS)
    assert Reranker.from_pretrained(str(folder), device="cpu").compute_score(PAIRS) == pytest.approx(expected)
    truncate(shards[1])
    assert raised(lambda: Reranker.from_pretrained(str(folder))).startswith(f"{shards[1]} is ")
    shards[1].unlink()
    message = raised(lambda: Reranker.from_pretrained(str(folder)))
    assert message.startswith(
        f"{folder / 'model.safetensors.index.json'} names shard(s) {shards[1].name}, missing"
    )


def test_bytes_changed_inside_tensor_data_cannot_be_detected(folders, tmp_path):
    """Safetensors has no checksum: the header checks pass and the file loads, with the changed weights and so
    other scores (documented in file_checks)."""
    folder = copy(folders, "ce", tmp_path)
    file = folder / "model.safetensors"
    length, header = read_header(file.read_bytes())
    # the score head's weight, [1, hidden] F32: it reaches every score
    name = next(k for k in header if k.endswith("classifier.weight"))
    with file.open("r+b") as handle:
        handle.seek(8 + length + header[name]["data_offsets"][0])
        handle.write(struct.pack("<2f", 4.0, -4.0))  # its first two weights
    check_safetensors(file)
    check_model_folder(folder)
    reranker = Reranker.from_pretrained(str(folder), device="cpu")  # no error
    weight = reranker.model.get_parameter(name)
    original = load_file(folders["ce"] / "model.safetensors")[name]
    assert weight.view(-1)[:2].tolist() == [4.0, -4.0]  # read back as written
    assert torch.equal(weight.view(-1)[2:], original.view(-1)[2:])  # and the rest as it was
    changed = reranker.compute_score(PAIRS)
    with torch.no_grad():
        weight.copy_(original)
    before = reranker.compute_score(PAIRS)  # the undamaged file's scores
    assert all(math.isfinite(a) and abs(a - b) > 1e-3 for a, b in zip(changed, before, strict=True))


# --- tokenizer files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ce", "llm", "llm_lora", "layerwise", "bert", "llama"])
def test_a_missing_vocabulary_file_is_named(folders, tmp_path, name):
    folder = copy(folders, name, tmp_path)
    (folder / "tokenizer.json").unlink()  # transformers 5 saves the vocabulary there (no vocab.txt)
    family = {"bert": "cross_encoder", "llama": "llm"}.get(name) or FULL.get(name) or ADAPTERS[name]
    message = raised(lambda: CLASSES[family].from_pretrained(str(folder), device="cpu"))
    assert message == (
        f"{folder}: tokenizer file(s) missing: a vocabulary file (tokenizer.json, vocab.txt, vocab.json with "
        "merges.txt, or a sentencepiece *.model); copy them from the model it was trained from (or save the "
        "tokenizer there)"
    )


@pytest.mark.parametrize("name", ["ce", "llm", "layerwise_lora", "bert"])
def test_a_missing_tokenizer_config_is_named(folders, tmp_path, name):
    folder = copy(folders, name, tmp_path)
    (folder / "tokenizer_config.json").unlink()
    message = raised(lambda: load_reranker(str(folder), device="cpu"))
    assert message.startswith(f"{folder}: tokenizer file(s) missing: tokenizer_config.json;")


def test_an_adapter_without_tokenizer_files_uses_its_base_models(folders, tmp_path):
    folder = copy(folders, "llm_lora", tmp_path)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        (folder / file).unlink()
    expected = LLMReranker.from_pretrained(str(folders["llm_lora"]), device="cpu").compute_score(PAIRS)
    assert LLMReranker.from_pretrained(str(folder), device="cpu").compute_score(PAIRS) == pytest.approx(
        expected
    )


def test_a_damaged_tokenizer_config_is_named(folders, tmp_path):
    folder = copy(folders, "ce", tmp_path)
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": ')
    assert raised(lambda: Reranker.from_pretrained(str(folder))).startswith(
        f"{folder / 'tokenizer_config.json'} is not valid JSON ("
    )


# --- rerankforge.json ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ce", "llm_lora", "layerwise"])
def test_a_spec_from_a_newer_version_names_the_file_and_both_versions(folders, tmp_path, name):
    folder = copy(folders, name, tmp_path)
    spec = folder / "rerankforge.json"
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "version": 3}))
    expected = f"{spec}: version 3 is newer than this rerankforge reads (1 to 2): upgrade rerankforge"
    assert raised(lambda: load_reranker(str(folder), device="cpu")) == expected
    family = FULL.get(name) or ADAPTERS[name]
    assert raised(lambda: CLASSES[family].from_pretrained(str(folder), device="cpu")) == expected
    assert raised(lambda: check_model_folder(folder)) == expected


def test_a_spec_that_is_not_json_is_named(folders, tmp_path):
    folder = copy(folders, "ce", tmp_path)
    (folder / "rerankforge.json").write_text('{"version": 2,')
    assert raised(lambda: load_reranker(str(folder))).startswith(
        f"{folder / 'rerankforge.json'} is not valid JSON"
    )


# --- family mismatches ---------------------------------------------------------------------------------------

MISMATCHES = [  # folder, the class used, the family found, the class to use
    ("llm", Reranker, "llm", "LLMReranker"),
    ("layerwise", Reranker, "layerwise", "LayerwiseReranker"),
    ("llm_lora", Reranker, "llm", "LLMReranker"),
    ("ce", LLMReranker, "cross_encoder", "Reranker"),
    ("ce", LayerwiseReranker, "cross_encoder", "Reranker"),
    ("llm", LayerwiseReranker, "llm", "LLMReranker"),
    ("llm_lora", LayerwiseReranker, "llm", "LLMReranker"),
    ("layerwise", LLMReranker, "layerwise", "LayerwiseReranker"),
    ("layerwise_lora", LLMReranker, "layerwise", "LayerwiseReranker"),
]


@pytest.mark.parametrize(
    ("name", "cls", "found", "use"), MISMATCHES, ids=[f"{m[0]}-{m[1].__name__}" for m in MISMATCHES]
)
def test_a_folder_of_another_family_names_the_family_and_the_class_to_use(folders, name, cls, found, use):
    folder = folders[name]
    family = {Reranker: "cross_encoder", LLMReranker: "llm", LayerwiseReranker: "layerwise"}[cls]
    assert raised(lambda: cls.from_pretrained(str(folder), device="cpu")) == (
        f"{folder} holds a {found!r} reranker (its rerankforge.json); {cls.__name__} loads {family!r} folders: "
        f"use {use}, or load_reranker(), which picks the class from the folder"
    )
    assert type(load_reranker(str(folder), device="cpu")).__name__ == use


def test_a_plain_causal_lm_folder_is_refused_by_the_cross_encoder_class_and_loads_by_load_reranker(folders):
    folder = folders["llama"]
    assert raised(lambda: Reranker.from_pretrained(str(folder))) == (
        f"{folder / 'config.json'}: LlamaForCausalLM is a causal LM, not a sequence classifier: Reranker loads "
        "'cross_encoder' models: use LLMReranker, or load_reranker(), which picks the class from the folder"
    )
    reranker = load_reranker(str(folder), device="cpu")
    assert isinstance(reranker, LLMReranker) and not reranker.trained


def test_a_plain_sequence_classifier_is_refused_by_the_llm_classes(folders):
    folder = folders["bert"]
    for cls in (LLMReranker, LayerwiseReranker):
        message = raised(lambda cls=cls: cls.from_pretrained(str(folder)))
        assert message.startswith(
            f"{folder / 'config.json'}: BertForSequenceClassification is a sequence classifier"
        )
        assert "use Reranker, or load_reranker()" in message


def test_a_spec_whose_family_disagrees_with_config_json_names_both_files(folders, tmp_path):
    llama = copy(folders, "llama", tmp_path)
    CrossEncoderSpec(query_max_len=8, passage_max_len=16, max_length=27).save(llama)
    expected = (
        f"{llama / 'config.json'}: LlamaForCausalLM is a causal LM, but {llama / 'rerankforge.json'} says family "
        "'cross_encoder' (a sequence classifier): the folder mixes two models' files"
    )
    assert raised(lambda: Reranker.from_pretrained(str(llama))) == expected
    assert raised(lambda: load_reranker(str(llama))) == expected
    assert raised(lambda: check_model_folder(llama)) == expected
    bert = copy(folders, "bert", tmp_path)
    LLMSpec(query_max_len=8, passage_max_len=16, max_length=24, yes_token_id=5).save(bert)
    message = raised(lambda: LLMReranker.from_pretrained(str(bert)))
    assert message.startswith(
        f"{bert / 'config.json'}: BertForSequenceClassification is a sequence classifier, but"
    )
    assert "says family 'llm' (a causal LM)" in message


def test_errors_are_value_errors_for_callers_that_catch_those(folders, tmp_path):
    assert issubclass(ModelFilesError, ValueError)
    with pytest.raises(ValueError, match="holds a 'llm' reranker"):
        Reranker.from_pretrained(str(folders["llm"]))


# --- no false positives --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["bert", "ce", "llm", "llm_lora", "llm_merged", "layerwise", "layerwise_lora", "llama"]
)
def test_valid_folders_of_every_family_load_and_score(folders, name):
    folder = folders[name]
    check_model_folder(folder)
    reranker = load_reranker(str(folder), device="cpu")
    scores = reranker.compute_score(PAIRS)
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    family = (
        {"bert": "cross_encoder", "llama": "llm", "llm_merged": "llm"}.get(name)
        or FULL.get(name)
        or ADAPTERS[name]
    )
    assert type(reranker) is CLASSES[family]
    assert CLASSES[family].from_pretrained(str(folder), device="cpu").compute_score(PAIRS) == pytest.approx(
        scores
    )


def test_an_adapter_saved_apart_loads_on_the_base_it_is_given(folders):
    """The adapter (LoRA B set non-zero) moves both scores by ~0.1 from the base's: loaded from its folder, put
    apart on the base, or merged, it gives the same scores, and none of them is the base's."""
    base = LLMReranker.from_pretrained(str(folders["llama"]), device="cpu").compute_score(PAIRS)
    expected = LLMReranker.from_pretrained(str(folders["llm_lora"]), device="cpu").compute_score(PAIRS)
    assert all(abs(a - b) > 0.02 for a, b in zip(expected, base, strict=True))
    apart = LLMReranker.from_pretrained(
        str(folders["llama"]), adapter_path=str(folders["llm_lora"]), device="cpu"
    )
    assert_same_scores(apart.compute_score(PAIRS), expected)
    merged = LLMReranker.from_pretrained(str(folders["llm_merged"]), device="cpu").compute_score(PAIRS)
    assert merged == pytest.approx(expected, abs=1e-5)


def test_a_hub_name_is_left_to_transformers():
    assert check_model_folder("someone/not-a-local-folder") is None
