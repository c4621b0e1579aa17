"""Issue 38: every patch target declared once (``_infra.targets.TARGETS``), walked on the installed release.

``nox -s compat`` runs this file on every proven release: a target declared present must resolve, with
the parameters the seams rely on; one declared only on some releases must be absent elsewhere. A target a
seam only calls (Transformers' ``rotate_checkpoints``) goes through the same table: the full-disk guard's
early rotation crashed with an ImportError on Transformers before 5.3 (Axolotl 0.13.2, 0.14.0).
"""

import errno
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import axolotl_savefix
from axolotl_savefix._infra import hooks, targets
from axolotl_savefix._infra.releases import package_version

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from test_checkpoints import make_checkpoint  # noqa: E402


@pytest.mark.parametrize("key", sorted(targets.TARGETS))
def test_each_target_is_where_the_table_says(key):
    target = targets.TARGETS[key]
    versions = f"axolotl {package_version('axolotl')}, transformers {package_version('transformers')}"
    if targets.present(key):
        owner, name, found = targets.resolve(key)
        assert getattr(owner, name) is found, versions
    elif target.only_there:
        with pytest.raises(targets.PatchTargetError):
            targets.resolve(key)


def test_a_seam_names_only_targets_of_the_table():
    axolotl_savefix.apply()
    import axolotl.core.builders.base  # noqa: F401 - the builder's targets too

    assert set(hooks._registry.layers) <= set(targets.TARGETS)
    assert hooks._registry.wrapped <= {key for key in targets.TARGETS if targets.present(key)}


def test_the_full_disk_guard_rotates_early_through_the_table_or_stops_cleanly(tmp_path, monkeypatch):
    """Free space short of the next save, enough once rotation's oldest goes: 5.3 on rotates now; before, it stops.

    Before the table, the guard imported ``transformers.trainer_utils.rotate_checkpoints``, which exists
    from Transformers 5.3 only: on Axolotl 0.13.2 (Transformers 4.57) this branch raised ImportError.
    """
    from axolotl_savefix.rules import disk
    from axolotl_savefix.seams import full_disk

    axolotl_savefix.apply()
    import axolotl.core.builders.base  # noqa: F401 - the rotation target is wrapped with the builder

    for step in (5, 10, 15):
        make_checkpoint(tmp_path, step)
    size = disk.dir_bytes(tmp_path / "checkpoint-15")
    monkeypatch.setattr(disk, "free_bytes", lambda _: disk.next_save_bytes(size) - size // 2)  # short; one rotation frees it
    monkeypatch.setattr(full_disk, "_local_main", lambda: True)
    args = SimpleNamespace(output_dir=str(tmp_path), save_strategy="steps", save_total_limit=2)
    state = SimpleNamespace(max_steps=20, global_step=15, best_model_checkpoint=None)
    if hooks.can_rotate_now():
        full_disk.DiskFullGuard().on_train_begin(args, state, object())
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-15"]  # the oldest went
    else:
        with pytest.raises(full_disk.DiskFullError) as stopped:
            full_disk.DiskFullGuard().on_train_begin(args, state, object())
        assert stopped.value.errno == errno.ENOSPC and "the next save (after step 15) cannot fit" in str(stopped.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-15", "checkpoint-5"]
