"""One run's settings in three dataclasses: every recipe key in exactly one, the mining options parsed from one
declaration by recipes and `rerankforge-data mine`, and nothing rewritten while a run goes."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import REPO, SHARED_DATA, write_jsonl
from test_cross_encoder_training import toy_records

from rerankforge.data_tools.cli import make_parser as data_parser
from rerankforge.data_tools.mining_arguments import MiningArguments, flag, mining_arguments_from
from rerankforge.inference.modeling.families import FAMILIES
from rerankforge.trainer.cli import parse_config
from rerankforge.trainer.data_arguments import DataArguments
from rerankforge.trainer.run_config import RecipeError, RunConfig
from rerankforge.trainer.training_run import train

CISI = SHARED_DATA / "cisi"


def field_names(kind: type) -> set[str]:
    return {f.name for f in dataclasses.fields(kind) if f.init}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_recipe_key_belongs_to_exactly_one_dataclass(family):
    training, data, mining = (
        field_names(k) for k in (FAMILIES[family].config_class, DataArguments, MiningArguments)
    )
    assert not training & data and not training & mining and not data & mining
    assert {"train_data", "ir_data", "eval_data", "eval_top_k"} <= data
    assert {
        name for name in training | data if name.startswith("mine_")
    } == set()  # all mining is in one place


def test_a_flat_recipe_lands_in_its_three_parts_and_the_command_line_overrides_each():
    run = parse_config([str(REPO / "recipes" / "minilm" / "cross_encoder" / "squad.yaml"), "--mine_num_negatives",
                        "3", "--eval_top_k", "7", "--learning_rate", "1e-4"])  # fmt: skip
    assert (
        run.training.learning_rate == 1e-4 and run.data.eval_top_k == 7 and run.mining.mine_num_negatives == 3
    )
    assert run.data.ir_data == "squad-v1.1-dev" and run.mining.mine_retriever == "bm25"
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.data = DataArguments(train_data=["x"])  # type: ignore[misc]
    with pytest.raises(RecipeError, match="unknown key\\(s\\) mine_ranks"):
        RunConfig.from_settings("here", model_name_or_path="m", train_data=["d"], mine_ranks=[1, 2])


def test_the_data_commands_mine_flags_are_the_recipes_mine_keys():
    """Each `MiningArguments` field is one `rerankforge-data mine` flag, with the recipe key's default; parsing
    the same settings both ways gives equal `MiningArguments`."""
    mine = data_parser()._subparsers._group_actions[0].choices["mine"]  # argparse keeps subparsers here
    by_dest = {action.dest: action for action in mine._actions}
    defaults = MiningArguments()
    for item in dataclasses.fields(MiningArguments):
        assert by_dest[item.name].option_strings == [flag(item.name)]
        assert by_dest[item.name].default == getattr(defaults, item.name), item.name
    args = data_parser().parse_args(["mine", "in", "out", "--rank-range", "2", "30", "--sampling", "top",
                                     "--teacher", "T", "--relative-margin", "0.05", "--output-scores",
                                     "--max-queries", "9", "--retriever", "hybrid"])  # fmt: skip
    from_recipe = parse_config(["--model_name_or_path", "m", "--ir_data", "d", "--mine_rank_range", "2", "30",
                                "--mine_sampling", "top", "--mine_teacher", "T", "--mine_relative_margin", "0.05",
                                "--mine_output_scores", "true", "--mine_max_queries", "9",
                                "--mine_retriever", "hybrid"]).mining  # fmt: skip
    assert mining_arguments_from(args) == from_recipe
    assert from_recipe.options(seed=3) == mining_arguments_from(args).options(seed=3)


def test_bad_mining_and_data_settings_fail_when_parsed():
    with pytest.raises(ValueError, match="mine_rank_range must be"):
        MiningArguments(mine_rank_range=[30, 2])
    with pytest.raises(ValueError, match="mine_sampling must be one of"):
        MiningArguments(mine_sampling="best")
    with pytest.raises(ValueError, match="need mine_teacher"):
        MiningArguments(mine_max_score=0.5)
    with pytest.raises(ValueError, match="train_data or ir_data is required"):
        DataArguments()
    with pytest.raises(ValueError, match="no ir_data is set"):
        DataArguments(train_data=["x"], ir_eval_split="test")
    assert DataArguments(train_data="one.jsonl").train_data == ["one.jsonl"]  # a Python caller's single path


@pytest.mark.skipif(not CISI.is_dir(), reason="the CISI mirror is not on this machine")
def test_a_mining_run_leaves_its_settings_as_given_and_records_them(tmp_path, tiny_bert_dir):
    """The mined file is a result of the run: the settings are equal before and after, and `training_args.json`
    records the data and mining settings beside the TrainingArguments."""
    run = RunConfig.from_settings(
        "test", model_name_or_path=str(tiny_bert_dir), ir_data=str(CISI), ir_split="test", eval_fraction=0.5,
        mine_num_negatives=3, mine_rank_range=[1, 10], mine_max_queries=6, eval_top_k=5, eval_max_queries=4,
        evaluate_before_training=False, train_group_size=4, query_max_len=16, passage_max_len=32,
        per_device_train_batch_size=2, max_steps=2, output_dir=str(tmp_path / "out"), use_cpu=True,
        report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    before = (dataclasses.asdict(run.data), dataclasses.asdict(run.mining), run.training.to_dict())
    out = train(run)
    assert (dataclasses.asdict(run.data), dataclasses.asdict(run.mining), run.training.to_dict()) == before
    assert run.data.train_data is None
    record = json.loads((out / "training_args.json").read_text())
    assert record["mined_train_data"] == [str(out / "data" / "train.jsonl")]
    assert record["mine_rank_range"] == [1, 10] and record["ir_data"] == str(CISI)
    assert record["learning_rate"] == run.training.learning_rate
    mined = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert len(mined) == 6 and all(len(r["neg"]) == 3 for r in mined)


def test_a_run_with_train_data_records_no_mining_options(tmp_path, tiny_bert_dir):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(4))
    run = RunConfig.from_settings(
        "test", model_name_or_path=str(tiny_bert_dir), train_data=[str(data)], train_group_size=4,
        query_max_len=16, passage_max_len=32, per_device_train_batch_size=2, max_steps=1,
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    record = json.loads((train(run) / "training_args.json").read_text())
    assert record["train_data"] == [str(data)] and not any(key.startswith("mine_") for key in record)


def test_mining_options_beside_train_data_are_said_to_do_nothing(caplog):
    with caplog.at_level("WARNING"):
        RunConfig.from_settings("here", model_name_or_path="m", train_data=["d"], mine_num_negatives=3)
    assert "here: mine_num_negatives have no effect: train_data is given" in caplog.text


def test_the_data_commands_errors_name_its_flags(capsys):
    from rerankforge.data_tools.cli import main as data_main

    assert data_main(["mine", "in", "out", "--rank-range", "0", "5"]) == 2
    assert "--rank-range must be [first, last]" in capsys.readouterr().err
    assert data_main(["mine", "in", "out", "--max-score", "0.5"]) == 2
    assert "--max-score and --output-scores need --teacher" in capsys.readouterr().err
