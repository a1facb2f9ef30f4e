"""Atomic writes: a failure leaves the previous file or folder whole, and no stray staging files."""

from __future__ import annotations

import pytest

from rerankforge.inference.modeling.files import atomic_folder, atomic_write_text, atomic_writer


def test_a_failed_file_write_keeps_the_previous_file(tmp_path):
    path = atomic_write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError), atomic_writer(path) as handle:
        handle.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_folder_appears_whole_replaces_the_old_one_and_a_failure_keeps_the_old(tmp_path):
    target = tmp_path / "merged"
    with atomic_folder(target) as staging:
        (staging / "model.safetensors").write_text("v1")
        assert not target.exists()  # nothing visible until the block succeeds
    assert (target / "model.safetensors").read_text() == "v1"
    with atomic_folder(target) as staging:
        (staging / "model.safetensors").write_text("v2")
    assert (target / "model.safetensors").read_text() == "v2"
    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "model.safetensors").write_text("half")
        raise RuntimeError("killed")
    assert (target / "model.safetensors").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]
