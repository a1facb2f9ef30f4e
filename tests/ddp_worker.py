"""Launched by tests/test_distributed.py under `accelerate launch`: train, then write this rank's weights.

`RERANKFORGE_TEST_FAIL_RANK=<r>` makes rank r raise after its first step, to check that the others do not hang.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file
from transformers import TrainerCallback

from rerankforge.data_tools import load_train_dataset
from rerankforge.trainer.cli import parse_config
from rerankforge.trainer.families import build_trainer


class FailOnRank(TrainerCallback):
    def __init__(self, rank: int):
        self.rank = rank

    def on_step_end(self, args, state, control, **kwargs):
        if args.process_index == self.rank:
            raise RuntimeError(f"rank {self.rank} fails on purpose")


def main() -> None:
    config = parse_config(sys.argv[1:])
    records = load_train_dataset(config.data.train_data, config.training.train_group_size)
    trainer = build_trainer(config.training, records, None)
    if "RERANKFORGE_TEST_FAIL_RANK" in os.environ:
        trainer.add_callback(FailOnRank(int(os.environ["RERANKFORGE_TEST_FAIL_RANK"])))
    trainer.train()
    trainer.save_model(config.training.output_dir)
    rank = config.training.process_index
    model = trainer.accelerator.unwrap_model(trainer.model)
    out = Path(config.training.output_dir)
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        str(out / f"rank{rank}.safetensors"),
    )
    facts = {"world_size": config.training.world_size, "global_step": trainer.state.global_step,
             "train_batch_size": trainer._train_batch_size * config.training.world_size}  # fmt: skip
    (out / f"rank{rank}.json").write_text(json.dumps(facts))
    logs = [{k: v for k, v in entry.items() if k.startswith("loss")} for entry in trainer.state.log_history]
    (out / f"rank{rank}_logs.json").write_text(json.dumps([entry for entry in logs if entry]))


if __name__ == "__main__":
    main()
