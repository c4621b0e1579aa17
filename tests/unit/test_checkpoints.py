"""The completeness rule on checkpoint folders built file by file (no torch: the formats are written here)."""

import json
import struct
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axolotl_savefix.rules import checkpoints

NEVER_WRITTEN = "trainer_state.json (never written: a save cut before its end, or a folder no save wrote)"


def safetensors_bytes(n_floats: int = 4) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * (4 * n_floats)


def torch_zip(path, payload: bytes = b"x" * 64) -> None:
    with zipfile.ZipFile(path, "w") as z:  # torch.save's format: a zip archive
        z.writestr("archive/data.pkl", payload)


def make_checkpoint(root, step, *, world=1, record=True, state=True, only_model=False):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(safetensors_bytes())
    if not only_model:
        rng = ["rng_state.pth"] if world == 1 else [f"rng_state_{r}.pth" for r in range(world)]
        for name in ("optimizer.pt", "scheduler.pt", *rng):
            torch_zip(folder / name)
    if state:
        body = {"global_step": step, "stateful_callbacks": {}}
        if record:
            body["stateful_callbacks"][checkpoints.RECORD] = {
                "args": {},
                "attributes": {"world_size": world, "save_only_model": only_model, "optimizer": not only_model},
            }
        (folder / "trainer_state.json").write_text(json.dumps(body))
    return folder


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_whole_checkpoint_is_complete(tmp_path):
    assert checkpoints.missing(make_checkpoint(tmp_path, 8)) == []
    assert checkpoints.missing(make_checkpoint(tmp_path, 9, world=2)) == []
    assert checkpoints.missing(make_checkpoint(tmp_path, 10, only_model=True)) == []


def test_no_trainer_state_is_incomplete(tmp_path):
    folder = make_checkpoint(tmp_path, 23, state=False)
    assert checkpoints.missing(folder) == [NEVER_WRITTEN]


def test_a_cut_trainer_state_is_incomplete(tmp_path):
    folder = make_checkpoint(tmp_path, 23)
    truncate(folder / "trainer_state.json")
    assert checkpoints.missing(folder) == ["trainer_state.json (cut while being written)"]


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "rng_state.pth"])
def test_a_cut_file_is_seen_even_with_a_trainer_state(tmp_path, name):
    folder = make_checkpoint(tmp_path, 23)
    truncate(folder / name)
    assert checkpoints.missing(folder) == [f"{name} (cut while being written)"]


@settings(max_examples=60, deadline=None)
@given(keep=st.floats(0.0, 0.999))
def test_any_cut_of_a_safetensors_file_is_seen(tmp_path_factory, keep):
    folder = make_checkpoint(tmp_path_factory.mktemp("c"), 5)
    truncate(folder / "model.safetensors", keep)
    assert "model.safetensors (cut while being written)" in checkpoints.missing(folder)


def test_every_rank_must_have_written_its_rng_state(tmp_path):
    folder = make_checkpoint(tmp_path, 12, world=2)
    (folder / "rng_state_1.pth").unlink()
    assert checkpoints.missing(folder) == ["rng_state_1.pth (rank 1 of 2)"]
    # without the run's record (a stock checkpoint) the world size is unknown: rules 1-3 only
    other = make_checkpoint(tmp_path, 13, world=2, record=False)
    (other / "rng_state_1.pth").unlink()
    assert checkpoints.missing(other) == []


def test_sharded_saves_must_have_finished(tmp_path):
    folder = make_checkpoint(tmp_path, 4)
    (folder / "pytorch_model_fsdp_0").mkdir()
    (folder / "pytorch_model_fsdp_0" / "__0_0.distcp").write_bytes(b"x")
    assert checkpoints.missing(folder) == ["pytorch_model_fsdp_0/.metadata (a sharded save that did not finish)"]
    (folder / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"x")
    (folder / "global_step4").mkdir()
    assert checkpoints.missing(folder) == ["latest (DeepSpeed's global_step4 did not finish)"]
    (folder / "latest").write_text("global_step4")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-00001-of-00002.safetensors").write_bytes(safetensors_bytes())
    assert checkpoints.missing(folder) == ["model-00002-of-00002.safetensors (listed in model.safetensors.index.json)"]


def test_every_problem_is_named(tmp_path):
    folder = make_checkpoint(tmp_path, 23, state=False)
    truncate(folder / "optimizer.pt")
    assert checkpoints.missing(folder) == [
        "trainer_state.json (never written: a save cut before its end, or a folder no save wrote)",
        "optimizer.pt (cut while being written)",
    ]


def test_a_folder_whose_state_is_another_step_is_incomplete(tmp_path):
    folder = make_checkpoint(tmp_path, 7)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
    assert checkpoints.missing(folder) == ["trainer_state.json (global_step 6, not 7)"]


def test_newest_complete_and_quarantine(tmp_path):
    for step in (8, 15):
        make_checkpoint(tmp_path, step)
    cut = make_checkpoint(tmp_path, 23, state=False)
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name: ignored, as by Axolotl
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["checkpoint-8", "checkpoint-15", "checkpoint-23"]
    assert checkpoints.newest_complete(tmp_path).name == "checkpoint-15"
    moved = checkpoints.quarantine(cut)
    assert moved.name == "incomplete-checkpoint-23" and moved.is_dir() and not cut.exists()
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["checkpoint-8", "checkpoint-15"]
    # cut again at the same step (a second preemption): a new name, nothing overwritten
    again = make_checkpoint(tmp_path, 23, state=False)
    assert checkpoints.quarantine(again).name == "incomplete-checkpoint-23.1"
    assert checkpoints.newest_complete(tmp_path / "nowhere") is None


def test_a_folder_moved_away_while_checked_is_incomplete(tmp_path, monkeypatch):
    """Another rank sets it aside between the listing and the check: not a crash, not complete."""
    folder = make_checkpoint(tmp_path, 12)
    real_scandir = checkpoints.os.scandir

    def scandir_after_a_move(path):
        if path == folder:
            checkpoints.quarantine(folder)
        return real_scandir(path)

    monkeypatch.setattr(checkpoints.os, "scandir", scandir_after_a_move)
    assert checkpoints.missing(folder) == [checkpoints.GONE]
    assert checkpoints.missing(tmp_path / "checkpoint-99") == [checkpoints.GONE]
