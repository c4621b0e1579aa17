"""Rule 0: the commit marker, written last; a folder with one is judged from it and one listing."""

import json

from test_checkpoints import make_checkpoint, truncate

from axolotl_savefix.rules import checkpoints

NEVER_WRITTEN = "trainer_state.json (never written: a save cut before its end, or a folder no save wrote)"


def commit(folder, *, world=1, only_model=False):
    step = checkpoints.step_of(folder)
    return checkpoints.write_marker(folder, step, world, only_model, "test")


def test_a_committed_checkpoint_is_complete_and_its_marker_names_every_file_with_its_size(tmp_path):
    folder = make_checkpoint(tmp_path, 8, world=2)
    marker = json.loads(commit(folder, world=2).read_text())
    assert marker["global_step"] == 8 and marker["world_size"] == 2
    assert marker["files"] == {p.name: p.stat().st_size for p in folder.iterdir() if p.name != checkpoints.MARKER}
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # written, then renamed
    assert checkpoints.missing(folder) == []


def test_a_file_truncated_after_the_marker_is_caught(tmp_path):
    """A disk fault after the save (not a cut save): the listing's size differs from the marker's."""
    folder = make_checkpoint(tmp_path, 8, world=2)
    commit(folder, world=2)
    size = (folder / "model.safetensors").stat().st_size
    truncate(folder / "model.safetensors")
    truncate(folder / "rng_state_1.pth")
    lacks = checkpoints.missing(folder)
    assert f"model.safetensors ({size // 2} bytes, {size} when saved: truncated or changed since the save)" in lacks
    assert any(lack.startswith("rng_state_1.pth (") and "since the save" in lack for lack in lacks)


def test_a_file_deleted_after_the_marker_is_caught(tmp_path):
    folder = make_checkpoint(tmp_path, 8)
    commit(folder)
    (folder / "optimizer.pt").unlink()
    assert checkpoints.missing(folder) == [f"optimizer.pt (deleted since the save: listed in {checkpoints.MARKER})"]


def test_a_preemption_record_is_not_a_commit_marker(tmp_path):
    """Preemption writes savefix_preemption.json before the save: such a folder is judged by the full rule."""
    folder = tmp_path / "checkpoint-8"
    folder.mkdir()
    (folder / "savefix_preemption.json").write_text(json.dumps({"global_step": 8}))
    assert checkpoints.missing(folder) == [NEVER_WRITTEN]
    cut = make_checkpoint(tmp_path, 9, state=False)
    (cut / "savefix_preemption.json").write_text(json.dumps({"global_step": 9}))
    assert checkpoints.missing(cut) == [NEVER_WRITTEN]


def test_a_marker_of_another_step_or_an_unreadable_one_is_bad_input_judged_file_by_file(tmp_path):
    """Issue 37: a marker that is not this folder's is treated as absent, with one note; the files judge."""
    folder = make_checkpoint(tmp_path, 8)
    commit(folder)
    moved = tmp_path / "checkpoint-9"
    folder.rename(moved)
    judged = checkpoints.judge(moved)
    assert judged.lacks == ("trainer_state.json (global_step 8, not 9)",)
    assert not judged.marked and judged.notes == (
        f"checkpoint-9/{checkpoints.MARKER} is not a commit marker this version reads "
        "(global_step 8, not 9: another checkpoint's): judged file by file",
    )
    (moved / checkpoints.MARKER).write_text("{not json")  # never written so (renamed whole): the full rule judges
    judged = checkpoints.judge(moved)
    assert judged.lacks == ("trainer_state.json (global_step 8, not 9)",)
    assert judged.notes == (f"checkpoint-9/{checkpoints.MARKER} does not parse as JSON: judged file by file",)


def test_the_marker_rule_opens_only_the_marker(tmp_path, monkeypatch):
    folder = make_checkpoint(tmp_path, 8, world=4)
    commit(folder, world=4)
    opened = []
    real_open = type(folder).open

    def counting_open(self, *args, **kwargs):
        opened.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(type(folder), "open", counting_open)
    assert checkpoints.missing(folder) == []
    assert opened == [checkpoints.MARKER]


def test_a_marker_does_not_make_a_folder_without_weights_or_rng_complete(tmp_path):
    folder = make_checkpoint(tmp_path, 8, world=2)
    (folder / "model.safetensors").unlink()
    (folder / "rng_state_1.pth").unlink()
    commit(folder, world=2)  # what was there at the commit: judged by the rules, not taken on trust
    assert checkpoints.missing(folder) == [checkpoints.NO_WEIGHTS, "rng_state_1.pth (rank 1 of 2)"]
    only = make_checkpoint(tmp_path, 9, only_model=True)
    commit(only, only_model=True)
    assert checkpoints.missing(only) == []
