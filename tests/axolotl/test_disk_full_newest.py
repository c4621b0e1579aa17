"""disk_full's size checks walk one checkpoint: the newest complete one."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))

from test_checkpoints import make_checkpoint, truncate  # noqa: E402

from axolotl_savefix import disk, disk_full  # noqa: E402


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
