"""disk_full's size checks walk one checkpoint: the newest complete one."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))

from test_checkpoints import make_checkpoint, truncate  # noqa: E402

from axolotl_savefix.rules import checkpoints, disk  # noqa: E402
from axolotl_savefix.seams import full_disk as disk_full  # noqa: E402


def test_the_disk_guard_measures_the_newest_complete_checkpoint_only(tmp_path, monkeypatch):
    for step in (5, 10):
        make_checkpoint(tmp_path, step)
    truncate(make_checkpoint(tmp_path, 15) / "model.safetensors")  # the newest is cut: not it
    walked = []
    real = disk.dir_bytes
    monkeypatch.setattr(disk, "dir_bytes", lambda p: walked.append(p.name) or real(p))
    newest, size = disk_full._newest(str(tmp_path))
    assert newest == tmp_path / "checkpoint-10" and size == real(newest)
    assert walked == ["checkpoint-10"]
    assert disk_full._newest(str(tmp_path / "none")) == (None, 0)


def _late_rank(folder, delay):
    """Another rank's part of the save, as Transformers' _save_rng_state writes it: the folder again, then the file."""
    import os
    import threading
    import time

    def write():
        time.sleep(delay)
        os.makedirs(folder, exist_ok=True)
        (folder / "rng_state_1.pth").write_bytes(b"rng")

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_a_failed_save_is_deleted_after_every_ranks_part_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(disk_full, "_local_main", lambda: True)
    folder = tmp_path / "checkpoint-19"
    checkpoints.write_pending(folder, 19, True, "test")  # what this run's save wrote first: the proof it is its own
    (folder / "rng_state_0.pth").write_bytes(b"rng")
    late = _late_rank(folder, 0.5)
    assert disk_full._remove(str(folder), world_size=2, rng_states=True) is True
    late.join()
    assert not folder.exists()  # rank 1 wrote before the delete: nothing came back

    checkpoints.write_pending(folder, 19, True, "test")
    late = _late_rank(folder, 0.5)
    assert disk_full._remove(str(folder), world_size=1, rng_states=True) is True  # one process: no wait
    late.join()
    assert folder.exists() and [p.name for p in folder.iterdir()] == ["rng_state_1.pth"]  # what the wait prevents


def test_a_failed_save_into_a_folder_that_was_there_before_the_run_is_left(tmp_path, monkeypatch):
    """Issue 37: no pending record of this run's (or one that says the folder was there): not provably its own."""
    monkeypatch.setattr(disk_full, "_local_main", lambda: True)
    for name, pending in (("checkpoint-19", None), ("checkpoint-23", False)):
        folder = tmp_path / name
        if pending is None:
            folder.mkdir()
        else:
            checkpoints.write_pending(folder, 23, pending, "test")
        (folder / "model.safetensors").write_bytes(b"half")
        assert disk_full._remove(str(folder), world_size=1, rng_states=True) is False
        assert (folder / "model.safetensors").read_bytes() == b"half"


def test_the_wait_for_the_other_ranks_is_bounded(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(disk_full, "_local_main", lambda: True)
    monkeypatch.setattr(disk_full, "RANKS_WAIT_SECONDS", 0.3)
    folder = tmp_path / "checkpoint-19"
    folder.mkdir()
    started = time.monotonic()
    assert disk_full._remove(str(folder), world_size=4, rng_states=True) is True  # ranks 0-3 never wrote: a failed rank
    assert 0.3 <= time.monotonic() - started < 5
    folder.mkdir()
    started = time.monotonic()
    assert disk_full._remove(str(folder), world_size=4, rng_states=False) is True  # save_only_model: no RNG files
    assert time.monotonic() - started < 0.3
