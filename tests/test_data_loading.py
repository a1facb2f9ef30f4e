"""Files, folders and grouping: nothing dropped, groups reproducible from (seed, epoch, example)."""

from __future__ import annotations

import logging

import pytest
from conftest import FE_TOY, write_jsonl

from rerankforge.data_tools import load_train_dataset, resolve_data_files
from rerankforge.data_tools.grouping import GroupedDataset


def test_a_folder_of_several_jsonl_files_loads_every_record(tmp_path):
    write_jsonl(
        tmp_path / "data" / "a.jsonl", [{"query": f"a{i}", "pos": ["p"], "neg": ["n"]} for i in range(3)]
    )
    write_jsonl(
        tmp_path / "data" / "b.jsonl",
        [
            {
                "query": "b0",
                "pos": ["p"],
                "neg": ["n"],
                "pos_scores": [1.0],
                "neg_scores": [0.0],
                "prompt": "x?",
            }
        ],
    )
    (tmp_path / "data" / "notes.txt").write_text("not data")
    records = load_train_dataset(tmp_path / "data")
    assert sorted(records["query"]) == ["a0", "a1", "a2", "b0"]
    b0 = records[records["query"].index("b0")]
    assert b0["pos_scores"] == [1.0] and b0["prompt"] == "x?"
    assert records[0]["pos_scores"] is None  # absent in a.jsonl: null, not an error


def test_files_and_folders_combine_in_order(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"query": "x", "pos": ["p"]}])
    files = resolve_data_files([tmp_path / "x.jsonl", FE_TOY / "example_data" / "normal"])
    assert [f.name for f in files] == ["x.jsonl", "examples.jsonl"]
    assert len(load_train_dataset(files)) == 11


def test_the_fe_toy_file_without_final_newline_keeps_all_ten_queries():
    assert len(load_train_dataset(FE_TOY / "old_examples_reranker" / "toy_finetune_data.jsonl")) == 10


@pytest.fixture
def records(tmp_path):
    rows = [
        {
            "query": f"q{i}",
            "pos": [f"p{i}a", f"p{i}b"],
            "neg": [f"n{i}_{j}" for j in range(10)],
            "pos_scores": [1.0, 2.0],
            "neg_scores": [float(-j) for j in range(10)],
        }
        for i in range(6)
    ]
    rows.append(
        {"query": "few", "pos": ["pf"], "neg": ["nf0", "nf1"], "pos_scores": [5.0], "neg_scores": [1.0, 2.0]}
    )
    return load_train_dataset(write_jsonl(tmp_path / "t.jsonl", rows))


def test_group_is_one_positive_then_distinct_negatives_with_matching_teacher_scores(records):
    dataset = GroupedDataset(records, train_group_size=5, seed=1)
    for index in range(6):
        group = dataset[index]
        assert group.passages[0] in records[index]["pos"]
        negatives = group.passages[1:]
        assert len(negatives) == 4 and len(set(negatives)) == 4
        assert set(negatives) <= set(records[index]["neg"])
        expected_scores = [records[index]["pos_scores"][records[index]["pos"].index(group.passages[0])]]
        expected_scores += [records[index]["neg_scores"][records[index]["neg"].index(n)] for n in negatives]
        assert group.teacher_scores == expected_scores


def test_draw_depends_only_on_seed_epoch_and_example(records):
    first = GroupedDataset(records, train_group_size=5, seed=1)
    second = GroupedDataset(records, train_group_size=5, seed=1)
    # fetched in another order, in another object: the same groups
    assert [first[i].passages for i in range(6)] == [second[i].passages for i in reversed(range(6))][::-1]
    second.set_epoch(1)
    assert [first[i].passages for i in range(6)] != [second[i].passages for i in range(6)]
    first.set_epoch(1)
    assert [first[i].passages for i in range(6)] == [second[i].passages for i in range(6)]
    other_seed = GroupedDataset(records, train_group_size=5, seed=2)
    other_seed.set_epoch(1)
    assert [first[i].passages for i in range(6)] != [other_seed[i].passages for i in range(6)]


def test_too_few_negatives_uses_all_then_repeats_and_is_logged_once(records, caplog):
    with caplog.at_level(logging.WARNING):
        dataset = GroupedDataset(records, train_group_size=5, seed=1)
    warnings = [r.getMessage() for r in caplog.records if "drawn with replacement" in r.getMessage()]
    assert warnings == [
        "1 of 7 queries have fewer than 4 negatives: their negatives are drawn with replacement"
    ]
    assert dataset.queries_with_repeated_negatives == 1
    group = dataset[6]
    assert set(group.passages[1:]) == {"nf0", "nf1"} and len(group.passages) == 5
    caplog.clear()
    for i in range(7):
        dataset[i]
    assert not caplog.records


def test_epoch_is_set_by_the_trainer_dataloader(records):
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    dataset = GroupedDataset(records, train_group_size=3, seed=1)
    loader = Accelerator(cpu=True).prepare(DataLoader(dataset, batch_size=2, collate_fn=list))
    loader.set_epoch(3)
    assert dataset.epoch == 3
