"""The set-aside policy, the disk check for every save_total_limit, `axolotl-savefix checkpoints`: on folders built here."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_checkpoints import make_checkpoint

from axolotl_savefix import cli
from axolotl_savefix.rules import checkpoints, cleanup, disk, plan


def _scan(steps: dict[int, tuple[bool, bool]]) -> list[tuple[Path, list[str], bool]]:
    """``{step: (complete, own_cut)}`` -> cleanup's scan, oldest first (own_cut only for an incomplete folder)."""
    return [
        (Path(f"/o/checkpoint-{s}"), [] if ok else ["trainer_state.json"], own and not ok) for s, (ok, own) in sorted(steps.items())
    ]


folders = st.dictionaries(st.integers(1, 60), st.tuples(st.booleans(), st.booleans()), max_size=8)
aside_steps = st.dictionaries(st.tuples(st.integers(1, 60), st.integers(0, 2)), st.booleans(), max_size=5)


@settings(max_examples=300, deadline=None)
@given(scan=folders, aside=aside_steps, free=st.none() | st.integers(0, 3000), size=st.integers(1, 1000))
def test_the_policy(scan, aside, free, size):
    """Issue 37: only provably own cut saves are ever deleted; older folders are never touched; the rest is renamed or left."""
    scanned = _scan(scan)
    aside_list = sorted(
        ((Path(f"/o/incomplete-checkpoint-{s}" + (f".{n}" if n else "")), own) for (s, n), own in aside.items()),
        key=lambda item: checkpoints.set_aside_step(item[0]),
    )
    aside_paths = [p for p, _ in aside_list]
    sizes = {p: size for p, _, _ in scanned} | {p: size for p in aside_paths}
    plan_ = cleanup.cleanup(scanned, aside_list, sizes=sizes, free_bytes=free)
    complete = [p for p, lacks, _ in scanned if not lacks]
    newest = complete[-1] if complete else None
    assert plan_.newest == newest
    deleted = [p for p, _ in plan_.delete]
    moved = [p for p, _ in plan_.set_aside]
    assert len(deleted) == len(set(deleted)) and not set(deleted) & set(moved)
    own = {p for p, _, is_own in scanned if is_own} | {p for p, is_own in aside_list if is_own}
    assert set(deleted) <= own  # nothing is deleted that is not provably the package's own cut save
    assert not (set(deleted) | set(moved)) & set(complete)  # a complete checkpoint is never touched
    newest_step = checkpoints.step_of(newest) if newest else -1
    older = [p for p, lacks, _ in scanned if lacks and checkpoints.step_of(p) < newest_step]
    assert not (set(deleted) | set(moved)) & set(older)  # older than the resume: not touched at all
    newer = [p for p, lacks, _ in scanned if lacks and checkpoints.step_of(p) > newest_step]
    assert set(newer) == set(moved) | (set(deleted) & set(newer))  # every cut newer than the resume leaves checkpoint-*
    assert set(plan_.kept) == set(aside_paths) - set(deleted)
    assert set(plan_.kept) >= {p for p, is_own in aside_list if not is_own}  # never deleted: not provably ours
    own_candidates = [p for p in [*newer, *aside_paths] if p in own]
    own_left = [p for p in own_candidates if p not in deleted]
    freed = sum(sizes[p] for p, why in plan_.delete if why != cleanup.SHORT_OF_SPACE)
    short = newest is not None and free is not None and free + freed < size
    if own_candidates:
        assert len(own_left) == (0 if short else 1)  # issue 19's bound, on the package's own cut saves only
        if own_left:
            newest_own = max(own_candidates, key=cleanup._order)
            assert own_left == [newest_own]


def test_only_provable_cut_saves_are_deleted_and_older_folders_are_left():
    scanned = _scan({8: (True, False), 15: (False, True), 23: (True, False), 30: (False, True), 38: (False, False)})
    aside = [(Path("/o/incomplete-checkpoint-5"), True), (Path("/o/incomplete-checkpoint-6"), False)]
    sizes = {p: 100 for p, _, _ in scanned} | {p: 100 for p, _ in aside} | {Path("/o/checkpoint-23"): 150}
    result = cleanup.cleanup(scanned, aside, sizes=sizes, free_bytes=10**6)
    assert result.newest == Path("/o/checkpoint-23")
    # 15 is older than the resume: not touched, though the package's own cut save
    assert [p for p, _ in result.set_aside] == [Path("/o/checkpoint-30"), Path("/o/checkpoint-38")]
    assert dict(result.delete) == {Path("/o/incomplete-checkpoint-5"): cleanup.OLDER_OWN_CUT}
    assert result.kept == (Path("/o/incomplete-checkpoint-6"),)
    short = cleanup.cleanup(scanned, aside, sizes=sizes, free_bytes=40)  # 5 frees 100: 140 is short of one checkpoint (150)
    assert dict(short.delete) == {
        Path("/o/incomplete-checkpoint-5"): cleanup.OLDER_OWN_CUT,
        Path("/o/checkpoint-30"): cleanup.SHORT_OF_SPACE,
    }
    assert [p for p, _ in short.set_aside] == [Path("/o/checkpoint-38")]  # not provably ours: renamed, kept
    alone = cleanup.cleanup(_scan({23: (False, True)}), [], sizes={}, free_bytes=0)  # no complete checkpoint: no shortage rule
    assert alone.delete == () and [p for p, _ in alone.set_aside] == [Path("/o/checkpoint-23")]


def test_set_aside_names():
    assert checkpoints.set_aside_step(Path("incomplete-checkpoint-30")) == (30, 0)
    assert checkpoints.set_aside_step(Path("incomplete-checkpoint-30.2")) == (30, 2)
    assert checkpoints.set_aside_step(Path("incomplete-checkpoint-x")) is None
    assert checkpoints.set_aside_step(Path("checkpoint-30")) is None


@pytest.mark.parametrize("gone", ["model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"])
def test_a_folder_rotation_half_deleted_is_incomplete(tmp_path, gone):
    folder = make_checkpoint(tmp_path, 8)
    (folder / gone).unlink()
    assert checkpoints.missing(folder)


@settings(max_examples=50, deadline=None)
@given(limit=st.none() | st.integers(-1, 10), n=st.integers(0, 12), size=st.integers(1, 10**6), final=st.integers(0, 10**6))
def test_peak_bytes(limit, n, size, final):
    need = disk.peak_bytes(list(range(1, n + 1)), limit, size, final)
    at_once = n if limit is None or limit <= 0 else min(n, limit + 1)
    assert need == max(at_once * size, (n if limit is None or limit <= 0 else min(n, limit)) * size + final)
    best = disk.max_fitting_limit(size, need or 0, final)
    if n and (limit is not None and 0 < limit < n):
        assert best >= limit  # a choice whose peak is the available space fits exactly


SETTINGS = dict(num_epochs=2, saves_per_epoch=4, patched=True)


@pytest.mark.parametrize(
    ("limit", "short"),
    [(0, True), (-1, True), (None, False), (2, False), (3, False), (4, True)],
)
def test_every_limit_is_checked_against_the_disk(limit, short):
    """30 steps per epoch, 8 saves of 310 KB, a final model of 100 KB, 1.3 MB available (about four)."""
    s = plan.Settings(**SETTINGS, save_total_limit=limit)
    result = plan.make_plan(s, 30, 60, checkpoint_bytes=310_000, free_bytes=1_300_000, final_bytes=100_000)
    assert result.disk_short is short
    warning = result.disk_warning()
    assert (warning is not None) is short
    if short:
        assert "1300000 bytes" in warning and "310000 bytes" in warning and "save_total_limit: 3" in warning
        assert "DISK SHORT" in plan.render(result)
    if limit is None:  # the unset rule counts the final model too: (2+1) * 310 KB + room for it
        assert result.patched.limit == 2


def test_a_limit_that_fits_is_not_warned():
    s = plan.Settings(**SETTINGS, save_total_limit=0)
    result = plan.make_plan(s, 30, 60, checkpoint_bytes=310_000, free_bytes=8 * 310_000 + 100_000, final_bytes=100_000)
    assert not result.disk_short and result.disk_warning() is None


def test_full_message_names_the_numbers_and_the_keys():
    text = disk.full_message(
        "/o", 100_000, 310_000, "measured: checkpoint-23", 3, 930_000, None, "the save of checkpoint-30 failed"
    )
    assert "output_dir /o has 100000 bytes free" in text
    assert "one checkpoint is 310000 bytes" in text and "3 checkpoints fit in all" in text
    assert "set save_total_limit: 2 (now keep all" in text and "output_dir" in text
    assert disk.is_disk_full(OSError(28, "No space left on device"))
    assert not disk.is_disk_full(OSError(2, "No such file"))


def test_final_model_message_and_the_weights_it_counts(tmp_path):
    folder = tmp_path / "checkpoint-60"
    folder.mkdir()
    for name, size in {"model.safetensors": 1000, "adapter_model.bin": 10, "optimizer.pt": 2000, "config.json": 5}.items():
        (folder / name).write_bytes(b"x" * size)
    weights = [folder / "model.safetensors", folder / "adapter_model.bin"]
    assert disk.weight_bytes(folder) == sum(f.stat().st_blocks * 512 for f in weights) >= 1010  # weights only, allocated
    assert disk.weight_bytes(tmp_path / "absent") == 0
    text = disk.final_model_message("/o", 500, 1010, "checkpoint-60", "the final model save into output_dir failed")
    assert text.startswith("disk full: the final model save into output_dir failed. output_dir /o has 500 bytes free")
    assert "the final model needs about 1010 bytes" in text and "The trained weights are in checkpoint-60" in text
    assert "save_total_limit" in text and "run the same command again" in text
    assert "needs about" not in disk.final_model_message("/o", 500, None, None, "x")


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_cli_checkpoints(tmp_path, capsys):
    out = tmp_path / "out"
    for step in (8, 15, 23):
        make_checkpoint(out, step)
    cut = make_checkpoint(out, 30)
    (cut / "trainer_state.json").write_text('{"global_st')
    half = out / "checkpoint-15" / "optimizer.pt"
    half.unlink()
    make_checkpoint(out, 4).rename(out / "incomplete-checkpoint-4")

    code, text = _cli(capsys, "checkpoints", str(out))
    assert code == 1  # the newest checkpoint-N was cut
    assert "checkpoint-23" in text and "<- a resume takes this one" in text
    assert "checkpoint-30" in text and "trainer_state.json (cut while being written)" in text
    assert "next auto-resume sets aside checkpoint-30" in text and "deletes" not in text  # nothing of ours to delete
    assert "checkpoint-15" in text and "older than the checkpoint a resume takes: left as it is" in text

    code, text = _cli(capsys, "checkpoints", "--json", str(out))
    report = json.loads(text)
    assert code == 1 and report["resume_from"] == "checkpoint-23"
    rows = {f["name"]: f for f in report["folders"]}
    assert [f["name"] for f in report["folders"]] == [
        "incomplete-checkpoint-4", "checkpoint-8", "checkpoint-15", "checkpoint-23", "checkpoint-30",
    ]  # fmt: skip
    assert rows["checkpoint-8"]["complete"] and rows["checkpoint-8"]["step"] == 8
    on_disk = subprocess.run(["du", "-s", "--block-size=1", str(out / "checkpoint-8")], capture_output=True, text=True)
    assert rows["checkpoint-8"]["bytes"] == int(on_disk.stdout.split()[0])  # allocated, as du counts it
    assert rows["checkpoint-8"]["bytes"] > sum(f.stat().st_size for f in (out / "checkpoint-8").iterdir())
    assert not rows["checkpoint-15"]["complete"] and rows["checkpoint-15"]["lacks"]
    assert rows["incomplete-checkpoint-4"]["kind"] == "set-aside"
    assert report["next_resume"]["delete"] == []
    assert report["next_resume"]["set_aside"] == [{"name": "checkpoint-30", "why": rows["checkpoint-30"]["lacks"][0]}]
    assert report["next_resume"]["kept"] == ["incomplete-checkpoint-4"]

    os.rename(out / "checkpoint-30", out / "incomplete-checkpoint-30")
    code, text = _cli(capsys, "checkpoints", str(out))
    assert code == 0, text  # the newest checkpoint-N is complete: a resume (patched or stock) takes it

    code, _ = _cli(capsys, "checkpoints", str(tmp_path / "nowhere"))
    assert code == 2


# --- the file system's arithmetic: allocated blocks, not apparent bytes (issue 31, item 0)


@given(size=st.integers(0, 10**9), block=st.sampled_from([512, 1024, 4096, 65536]))
def test_allocated_rounds_each_file_up_to_whole_blocks_where_st_blocks_is_not_reported(size, block):
    got = disk.allocated(size, None, block)
    assert got % block == 0 and size <= got < size + block
    assert disk.allocated(size, 0, block) == got  # 0 blocks for a non-empty file: not counted, so rounded too


def test_allocated_takes_st_blocks_where_reported():
    assert disk.allocated(1000, 8, 4096) == 4096  # st_blocks is in 512-byte units, whatever the block size
    assert disk.allocated(10**6, 16, 4096) == 8192  # a sparse file: what it holds now
    assert disk.allocated(0, 0, 4096) == 0


def test_dir_bytes_is_what_du_says_is_allocated(tmp_path):
    folder = tmp_path / "checkpoint-8"
    (folder / "sub").mkdir(parents=True)
    for name, size in {"model.safetensors": 300_001, "rng_state.pth": 14_645, "trainer_state.json": 777, "sub/x": 1}.items():
        (folder / name).write_bytes(os.urandom(size))
    (folder / "link").symlink_to(folder / "model.safetensors")  # not followed: its own blocks only
    du = subprocess.run(["du", "-s", "--block-size=1", str(folder)], capture_output=True, text=True, check=True)
    assert disk.dir_bytes(folder) == int(du.stdout.split()[0])
    assert disk.apparent_bytes(folder) == 300_001 + 14_645 + 777 + 1
    assert disk.dir_bytes(folder) > disk.apparent_bytes(folder)
    assert disk.dir_bytes(tmp_path / "absent") == 0


def test_the_issues_rerun_does_not_fit_when_blocks_are_counted():
    """The held-out rerun: 323584 bytes free, checkpoint-23 is 323464 bytes apparent, 356352 allocated (4 KiB blocks)."""
    free, apparent, allocated = 323_584, 323_464, 356_352
    assert free >= apparent  # what the check compared: "fits", and the run trained 7 steps into ENOSPC
    assert not disk.next_save_fits(free, allocated, 4096)
    assert disk.fit_count(free, allocated, 0, disk.next_save_bytes(allocated) - allocated) == 0


@given(size=st.integers(1, 10**9), block=st.sampled_from([512, 4096, 65536]), extra=st.integers(-(10**6), 10**6))
def test_the_next_save_needs_one_checkpoint_and_the_stated_slack(size, block, extra):
    need = disk.next_save_bytes(size, block)
    assert need == size + disk.NEXT_SAVE_SLACK_BLOCKS * block
    assert disk.next_save_fits(need + extra, size, block) is (extra >= 0)


def test_the_stop_line_says_allocated_and_what_the_next_save_needs():
    text = disk.full_message("/o", 323_584, 356_352, "measured: checkpoint-23", 3, 3 * 356_352, 0, "x", 4096)
    assert "one checkpoint is 356352 bytes allocated on disk" in text
    assert f"the next save needs {356_352 + 16 * 4096} bytes free" in text
    assert "3 checkpoints fit in all" in text  # 3 kept plus the free space, less the slack: not a 4th
    assert "cannot make room" in text or "save_total_limit: 2" in text
