"""Atomic checkpoints: newest-first, truncated files fall back, temp files never count."""

import pytest
import torch

from learner.checkpoint import list_checkpoints, load_newest, save_checkpoint


def state(i: int) -> dict:
    return {"iteration": i, "weights": torch.full((3,), float(i)), "rng": {"state": [1, 2, 3]}}


def test_save_and_load_newest(tmp_path):
    for i in (1, 2, 3):
        save_checkpoint(tmp_path, i, state(i))
    found = load_newest(tmp_path)
    loaded, path = found.state, found.path
    assert loaded["iteration"] == 3 and path.name == "ckpt-00000003.pt"
    assert torch.equal(loaded["weights"], torch.full((3,), 3.0))


def test_keeps_only_the_newest(tmp_path):
    for i in range(6):
        save_checkpoint(tmp_path, i, state(i), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000005.pt", "ckpt-00000004.pt"]


def test_truncated_newest_falls_back_to_previous(tmp_path, caplog):
    save_checkpoint(tmp_path, 1, state(1))
    newest = save_checkpoint(tmp_path, 2, state(2))
    newest.write_bytes(newest.read_bytes()[:40])
    found = load_newest(tmp_path)
    loaded, path = found.state, found.path
    assert loaded["iteration"] == 1 and path.name == "ckpt-00000001.pt"
    assert "falling back" in caplog.text


def test_temp_files_are_never_checkpoints(tmp_path):
    save_checkpoint(tmp_path, 1, state(1))
    (tmp_path / ".tmp-ckpt-abc.partial").write_bytes(b"half a checkpoint")
    (tmp_path / "ckpt-00000009.pt.partial").write_bytes(b"junk")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000001.pt"]


def test_nothing_to_load(tmp_path):
    assert load_newest(tmp_path / "missing") is None


class Custom:
    pass


def test_state_that_needs_pickle_is_refused_at_save(tmp_path):
    save_checkpoint(tmp_path, 1, state(1))
    with pytest.raises(ValueError, match="weights_only"):
        save_checkpoint(tmp_path, 2, {"iteration": 2, "obj": Custom()})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000001.pt"]  # no temp file left behind
