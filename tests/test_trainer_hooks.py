"""The private `transformers.Trainer` methods rerankforge overrides or calls, where transformers has no public hook.

Each was read against transformers 5.9.0 (the floor) and 5.25.0; the behaviour tests named here fail when one
changes what rerankforge relies on, and this file fails first, naming the method, when its name, parameters or
the part of its body that rerankforge depends on change (docs/development.md, "Private Trainer methods").
"""

from __future__ import annotations

import inspect

import pytest
from transformers import Trainer

from rerankforge.trainer.base_trainer import RerankerTrainer

# method -> (the parameters rerankforge passes or overrides with, what it relies on in the body, behaviour test)
HOOKS = {
    "_get_grad_norm": (["model", "grad_norm"], None, "test_faults.py (the NaN guard sees every step's norm)"),
    "_finalize_training": (["trial", "num_train_samples", "start_time"], None,
                           "test_faults.py: the SIGTERM tests run it (none yet with load_best_model_at_end or save_total_limit 1)"),
    "_save_checkpoint": (["model", "trial"], "save_total_limit=self.args.save_total_limit",
                         "test_resume.py::test_rotation_never_deletes_the_newest_complete_checkpoint"),
    "_load_optimizer_and_scheduler": (["checkpoint"], None,
                                      "test_distributed.py (the 2-process SIGTERM resume)"),
    "_load_from_checkpoint": (["resume_from_checkpoint", "model"], None,
                              "test_resume.py::test_resuming_a_finished_run_takes_no_step_past_max_steps"),
    "_prepare_inputs": (["inputs"], None, "test_evaluation.py (prediction_step), test_faults_memory.py"),
    "_get_output_dir": (["trial"], None, "test_resume.py (checkpoint folders)"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_each_private_trainer_method_is_as_it_was_read(name):
    parameters, body, _ = HOOKS[name]
    method = getattr(Trainer, name, None)
    assert method is not None, f"transformers.Trainer.{name} is gone: see docs/development.md"
    assert list(inspect.signature(method).parameters)[1:] == parameters, name
    if body is not None:
        assert body in inspect.getsource(method), f"Trainer.{name} no longer does {body!r}"


def test_the_overrides_are_the_ones_listed():
    overridden = {
        n
        for n in vars(RerankerTrainer)
        if n.startswith("_") and not n.startswith("__") and hasattr(Trainer, n)
    }
    assert overridden <= set(HOOKS), (
        f"an override of a private Trainer method without an entry here: {overridden - set(HOOKS)}"
    )


def test_the_training_loop_still_ends_through_finalize_training():
    assert "self._finalize_training(" in inspect.getsource(Trainer._inner_training_loop)
