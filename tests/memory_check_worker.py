"""Launched by tests/test_faults_memory.py under torchrun: the memory check on every rank, one of them short of
memory; each rank writes whether it stopped and its message's first line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from rerankforge.data_tools import load_train_dataset
from rerankforge.trainer.families import build_trainer
from rerankforge.trainer.memory_check import MemoryEstimateError, check_step_memory
from rerankforge.trainer.run_config import RunConfig


def main() -> None:
    family, settings, short_rank = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    run = RunConfig.from_settings("memory_check_worker", family=family, **settings)
    config = run.training
    if config.process_index == short_rank:
        config.memory_limit_gb = 0.001  # this process's host has (almost) nothing free
    torch.manual_seed(0)
    trainer = build_trainer(config, load_train_dataset(run.data.train_data, config.train_group_size))
    try:
        estimate = check_step_memory(trainer)
        facts = {"stopped": False, "processes": estimate.processes}
        trainer.train()
    except MemoryEstimateError as error:
        facts = {"stopped": True, "message": str(error).splitlines()[0], "steps": trainer.state.global_step}
    out = Path(config.output_dir) / f"memory_rank{config.process_index}.json"
    out.write_text(json.dumps(facts))
    if torch.distributed.is_initialized():  # gloo's threads, left running at exit, can abort the process
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
