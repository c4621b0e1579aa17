"""A full disk and the folders faults leave behind, on real file systems (tmpfs mounts of exact sizes).

The reported case (60 samples, micro batch 2, ``saves_per_epoch: 4``, 2 epochs) with
``output_dir`` on a tmpfs sized from one measured checkpoint (room for about four), each run a
real ``axolotl train`` process, stock beside patched. Needs root on Linux (``mount -t tmpfs``);
elsewhere the tests skip and say why. Session: ``nox -s disk``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys

import cases
import harness
import pytest
import reference
import safetensors
import yaml
from test_preemption import assert_complete

pytestmark = [pytest.mark.e2e, pytest.mark.disk]

HERE = harness.Path(__file__).parent
ENV = {"PYTHONPATH": str(HERE)}  # kill_shim.py
CASE = cases.case("reported")  # 30 steps per epoch, saves at 8 15 23 30 38 45 53 60
PAGE = 4096
STOP_LINE = re.compile(r"DiskFullError: \[Errno 28\] (disk full: .*)")
TRAIN_STEP = re.compile(r"\{'loss': ")  # Transformers logs every step (logging_steps: 1)
FULL_TEXTS = ("No space left on device", "iostream error", "file write failed", "unexpected pos")
RECORD = HERE.parent.parent / ".nox" / "disk-outcomes.jsonl"


def _expected(stock: bool = False) -> list[int]:
    L = CASE["samples"] // CASE["micro_batch"]
    G, k, epochs = CASE["grad_accum"], CASE["saves_per_epoch"], CASE["num_epochs"]
    M = reference.axolotl_max_steps(CASE["samples"], CASE["micro_batch"], G, epochs, 1)
    return reference.stock_saves(L, G, k, epochs, M) if stock else reference.patched_saves(L, G, k, M)


def _mount_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"tmpfs mounts need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "mounting a tmpfs of an exact size needs root (run the disk session as root, or in a container)"
    return None


@contextlib.contextmanager
def tmpfs(path: harness.Path, size: int):
    """A real file system of ``size`` bytes (rounded up to pages) at ``path``; skips where mounting is not permitted."""
    reason = _mount_reason()
    if reason:
        pytest.skip(reason)
    path.mkdir(parents=True, exist_ok=True)
    size = -(-size // PAGE) * PAGE
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _config(root: harness.Path, name: str, *, plugin: bool, output_dir: harness.Path | None = None, **keys) -> harness.Path:
    config = harness.write_config(CASE, root / name, plugin=plugin)
    cfg = yaml.safe_load(config.read_text())
    cfg["plugins"] = ["kill_shim.KillShim", *(cfg.get("plugins") or [])]
    cfg["auto_resume_from_checkpoints"] = True
    if output_dir is not None:
        cfg["output_dir"] = str(output_dir)
    cfg.update(keys)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def _record(test: str, **outcome) -> None:
    """What a run did (stock or patched), appended to .nox/disk-outcomes.jsonl and printed (pytest -s)."""
    line = {"test": test, **outcome}
    print(json.dumps(line))
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    with RECORD.open("a") as f:
        f.write(json.dumps(line) + "\n")


def _last_error(log: str, launcher: bool = True) -> str:
    """The last exception line; ``launcher=False``: leaving out accelerate's CalledProcessError about its child."""
    lines = [line for line in log.splitlines() if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    if not launcher:
        lines = [line for line in lines if not line.startswith("subprocess.CalledProcessError")]
    return lines[-1] if lines else log.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sizes(e2e_root):
    """One checkpoint's bytes and the final model's, measured on a real run of the case (the first save only)."""
    config = _config(e2e_root, "disk-measure", plugin=True, max_steps=8, save_total_limit=1)
    code, log = harness.run_cli_raw(config, env=ENV)
    assert code == 0, log[-4000:]
    out = harness.output_dir(config)
    checkpoint = harness.Path(out / "checkpoint-8")
    one = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    pages = sum(-(-f.stat().st_size // PAGE) * PAGE for f in checkpoint.rglob("*") if f.is_file())
    final = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    _record("measure", checkpoint_bytes=one, checkpoint_pages_bytes=pages, final_model_bytes=final)
    return {"checkpoint": one, "pages": pages, "final": final}


def _small_disk(sizes) -> int:
    """Room for about four checkpoints (as in the issue: 1.4 MB for 310 KB ones), in the pages tmpfs counts."""
    return 4 * sizes["pages"] + sizes["pages"] // 2


def test_keep_all_on_a_small_disk_warns_stops_clearly_and_does_not_loop(e2e_root, sizes):
    """Row 3 of the issue: save_total_limit: 0 (keep all) on a disk for about four checkpoints."""
    expected = _expected()
    with tmpfs(e2e_root / "disk-keep-all-mnt", _small_disk(sizes)) as mnt:
        config = _config(e2e_root, "disk-keep-all", plugin=True, output_dir=mnt / "out", save_total_limit=0)
        out = harness.output_dir(config)
        code, first = harness.run_cli_raw(config, env=ENV, log_name="first.log")
        warnings = [line for line in first.splitlines() if "WARNING: disk: save_total_limit keep all needs" in line]
        stop = STOP_LINE.findall(first)
        _record("keep-all patched, first", code=code, warning=warnings[:1], stop=stop[-1:], kept=sorted(os.listdir(out)))
        assert code != 0
        assert len(warnings) == 1, first[-4000:]  # at start, once, with the numbers and the fix
        assert "save_total_limit: " in warnings[0].split("Fix:")[1]
        assert len(stop) == 1, first[-4000:]
        cut = int(re.search(r"the save of checkpoint-(\d+) failed", stop[0]).group(1))
        assert cut in expected
        assert _last_error(first, launcher=False).endswith(stop[0])  # the training process's last line
        for words in (f"output_dir {out} has", "bytes free", "one checkpoint is", " in all", "save_total_limit"):
            assert words in stop[0]
        assert not (out / f"checkpoint-{cut}").exists()  # the half-written checkpoint is gone
        assert not list(out.glob("incomplete-*"))
        before = [s for s in expected if s < cut]
        assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == before

        code, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
        stop2 = STOP_LINE.findall(second)
        _record("keep-all patched, rerun", code=code, stop=stop2[-1:], steps=len(TRAIN_STEP.findall(second)))
        if code != 0:  # stops before the first training step, with the same message
            assert len(stop2) == 1 and "cannot fit: the run stops before training" in stop2[0], second[-4000:]
            assert not TRAIN_STEP.findall(second) and "Saving model checkpoint" not in second
            same = re.compile(r"output_dir (\S+) has .*; (one checkpoint is \d+ bytes)")
            assert same.search(stop2[0]).groups() == same.search(stop[0]).groups()  # the same disk, the same numbers
        else:  # or it fits (the garbage is gone): then it completes exactly
            observed = harness.observe(out, second)
            assert observed.kept == expected
        assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == before  # nothing lost


def _fill_to(mnt: harness.Path, free: int) -> int:
    """Write ``mnt/filler`` until ``f_bavail`` of ``mnt`` is ``free`` bytes (a whole number of pages); the free bytes left."""
    stats = os.statvfs(mnt)
    now = stats.f_bavail * stats.f_frsize
    assert now > free, (now, free)
    with (mnt / "filler").open("ab") as f:
        f.write(b"\0" * (now - free))
    stats = os.statvfs(mnt)
    return stats.f_bavail * stats.f_frsize


@pytest.mark.parametrize("plugin", [True, False], ids=["patched", "stock"])
def test_keep_all_rerun_that_fits_in_apparent_bytes_but_not_in_blocks(e2e_root, plugin):
    """Issue 31, item 0: the rerun's free space lies between the next checkpoint's apparent and allocated size.

    save_total_limit: 0 (keep all); the first run is SIGKILLed right after checkpoint-8 is complete
    (kill_shim); then the tmpfs is filled to one page under checkpoint-8's allocated size (its files
    rounded up to pages), which is still more than its apparent bytes. Patched, the same command stops
    before the first training step with the disk-full line (it compared apparent bytes before, trained
    to the next save and died of ENOSPC, every rerun); stock trains into the full disk.
    """
    name = "patched" if plugin else "stock"
    first_save = _expected()[0]
    with tmpfs(e2e_root / f"disk-blocks-{name}-mnt", 8 * 2**20) as mnt:
        config = _config(e2e_root, f"disk-blocks-{name}", plugin=plugin, output_dir=mnt / "out", save_total_limit=0)
        out = harness.output_dir(config)
        code, first = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_KILL_AT": f"{first_save}:after_state"}, log_name="first.log")
        assert code != 0 and f"SIGKILL just after writing checkpoint-{first_save}/trainer_state.json" in first, first[-3000:]
        checkpoint = out / f"checkpoint-{first_save}"
        apparent = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
        allocated = harness.du_bytes(checkpoint)
        assert allocated - apparent >= 3 * PAGE, (apparent, allocated)  # room for a free space between the two
        left = _fill_to(mnt, allocated - PAGE)
        assert apparent < left < allocated

        code, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
        steps = len(TRAIN_STEP.findall(second))
        stop = STOP_LINE.findall(second)
        _record(f"blocks {name}, rerun", apparent=apparent, allocated=allocated, free=left, code=code, steps=steps,
                stop=stop[-1:], error=_last_error(second, launcher=False))  # fmt: skip
        assert code != 0, second[-4000:]
        assert f"resume from checkpoint at {checkpoint}" in second, second[-4000:]
        if not plugin:  # stock: it resumes, trains to the next save, and the disk is full there
            assert steps > 0 and any(words in second for words in FULL_TEXTS), second[-4000:]
            return
        assert len(stop) == 1 and "cannot fit: the run stops before training" in stop[0], second[-4000:]
        assert not steps and "Saving model checkpoint" not in second
        assert _last_error(second, launcher=False).endswith(stop[0])  # the run's last line
        said = re.search(r"has (\d+) bytes free .*one checkpoint is (\d+) bytes allocated on disk", stop[0])
        assert said, stop[0]
        free_then, size_said = map(int, said.groups())
        assert size_said == allocated  # blocks, not apparent bytes
        assert apparent <= free_then < allocated  # what the check saw: apparent bytes fit, blocks do not
        assert sorted(p.name for p in out.glob("checkpoint-*")) == [checkpoint.name]  # nothing lost


def test_ddp_keep_all_on_a_small_disk_stops_clearly_and_does_not_loop(e2e_root, sizes):
    """Row 3 on 2-process DDP (torchrun, gloo): the rank-0 save that fills the disk deletes its garbage, every
    rank stops, and the same command stops before training (or fits), never training to the same full save."""
    world = 2
    L = CASE["samples"] // (CASE["micro_batch"] * world)
    M = reference.axolotl_max_steps(CASE["samples"], CASE["micro_batch"], CASE["grad_accum"], CASE["num_epochs"], world)
    expected = reference.patched_saves(L, CASE["grad_accum"], CASE["saves_per_epoch"], M)
    env = {**ENV, "ACCELERATE_USE_CPU": "true"}
    with tmpfs(e2e_root / "disk-ddp-mnt", _small_disk(sizes)) as mnt:
        config = _config(e2e_root, "disk-ddp", plugin=True, output_dir=mnt / "out", save_total_limit=0)
        cfg = yaml.safe_load(config.read_text())
        cfg["plugins"] = ["cpu_ddp_shim.CpuDdpShim", *cfg["plugins"]]
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        out = harness.output_dir(config)
        code, first = harness.run_cli_raw(config, launcher=harness.torchrun(config, world), env=env, log_name="first.log")
        stop = STOP_LINE.findall(first)
        _record("keep-all DDP patched, first", code=code, stop=stop[-1:], kept=sorted(os.listdir(out)))
        assert code != 0
        assert len(stop) == 1, first[-4000:]  # rank 0's one line (the other rank is stopped by torchrun)
        cut = int(re.search(r"the save of checkpoint-(\d+) failed", stop[0]).group(1))
        assert cut in expected
        assert not (out / f"checkpoint-{cut}").exists() and not list(out.glob("incomplete-*"))
        before = [s for s in expected if s < cut]
        assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == before
        for step in before:
            assert_complete(out / f"checkpoint-{step}", step, world)

        code, second = harness.run_cli_raw(config, launcher=harness.torchrun(config, world), env=env, log_name="second.log")
        stop2 = STOP_LINE.findall(second)
        _record("keep-all DDP patched, rerun", code=code, stop=stop2[-1:], steps=len(TRAIN_STEP.findall(second)))
        assert code != 0, second[-4000:]  # the disk did not grow: the next save cannot fit
        assert stop2 and all("cannot fit: the run stops before training" in line for line in stop2), second[-4000:]
        assert not TRAIN_STEP.findall(second) and "Saving model checkpoint" not in second
        assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == before  # nothing lost


@pytest.mark.parametrize("plugin", [True, False], ids=["patched", "stock"])
def test_a_full_disk_at_the_final_model_save(e2e_root, sizes, plugin):
    """Another writer fills the disk before the final model save (fill_shim, at train end): patched, the half-written
    final model is deleted and the run stops with one line; the rerun stops before training while the disk is full,
    and writes only the final model once there is room. Stock: recorded (Errno 28, the rerun fails again)."""
    expected = _expected()
    limit = 2
    name = "patched" if plugin else "stock"
    with tmpfs(e2e_root / f"disk-final-{name}-mnt", _small_disk(sizes)) as mnt:
        config = _config(e2e_root, f"disk-final-{name}", plugin=plugin, output_dir=mnt / "out", save_total_limit=limit)
        cfg = yaml.safe_load(config.read_text())
        cfg["plugins"] = ["fill_shim.FillShim", *cfg["plugins"]]
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        out = harness.output_dir(config)
        code, first = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_FILL_LEAVE": str(2 * PAGE)}, log_name="first.log")
        left = sorted(os.listdir(out))
        code2, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
        _record(f"final model {name}", code=code, error=_last_error(first, launcher=False), left=left, rerun_code=code2,
                rerun_error=_last_error(second, launcher=False), rerun_steps=len(TRAIN_STEP.findall(second)))  # fmt: skip
        assert "[fill_shim]" in first and len(TRAIN_STEP.findall(first)) == expected[-1]
        assert code != 0 and code2 != 0  # no room for the final model, before and after the rerun
        if not plugin:
            return
        stop = STOP_LINE.findall(first)
        assert len(stop) == 1 and "the final model save into output_dir failed" in stop[0], first[-4000:]
        assert _last_error(first, launcher=False).endswith(stop[0])
        assert f"The trained weights are in checkpoint-{expected[-1]} meanwhile" in stop[0]
        assert "model.safetensors" not in left  # no half-written final model
        assert "debug.log" in left and "config.json" in left  # the run's log and config stay
        kept = expected[-limit:]
        assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == kept
        stop2 = STOP_LINE.findall(second)
        assert len(stop2) == 1 and f"the final model cannot fit (the run resumed at its last step, {expected[-1]})" in stop2[0]
        assert not TRAIN_STEP.findall(second)

        (mnt / "filler").unlink()  # room again: the same command writes only the final model
        code3, third = harness.run_cli_raw(config, env=ENV, log_name="third.log")
        assert code3 == 0, third[-4000:]
        assert not TRAIN_STEP.findall(third) and "Saving model checkpoint" not in third
        assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == kept
        with safetensors.safe_open(str(out / "model.safetensors"), "pt") as f:
            for key in f.keys():
                f.get_tensor(key)
        for step in kept:
            assert_complete(out / f"checkpoint-{step}", step)


def test_unset_limit_on_a_small_disk_stays_green_and_exact(e2e_root, sizes):
    """Row 2 of the issue: the disk rule keeps what fits and warns once; every scheduled save is made."""
    expected = _expected()
    with tmpfs(e2e_root / "disk-unset-mnt", _small_disk(sizes)) as mnt:
        config = _config(e2e_root, "disk-unset", plugin=True, output_dir=mnt / "out")
        out = harness.output_dir(config)
        code, log = harness.run_cli_raw(config, env=ENV)
        observed = harness.observe(out, log) if code == 0 else None
        kept = re.findall(r"keeping the newest (\d+)", log)
        _record("unset patched", code=code, kept_limit=kept[:1], saved=observed and observed.saved, kept=observed and observed.kept)
        assert code == 0, log[-4000:]
        assert len(kept) == 1 and int(kept[0]) >= 2
        assert observed.saved == expected
        assert observed.kept == expected[-int(kept[0]) :]
        for step in observed.kept:
            assert_complete(out / f"checkpoint-{step}", step)


def test_stock_unset_limit_on_a_small_disk_fails_and_its_rerun_too(e2e_root, sizes):
    """Row 1 of the issue, recorded: stock keeps 4, dies of Errno 28, and the same command fails again."""
    with tmpfs(e2e_root / "disk-stock-mnt", _small_disk(sizes)) as mnt:
        config = _config(e2e_root, "disk-stock", plugin=False, output_dir=mnt / "out")
        out = harness.output_dir(config)
        code, first = harness.run_cli_raw(config, env=ENV, log_name="first.log")
        left = sorted(os.listdir(out))
        code2, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
        _record(
            "unset stock", first_code=code, first_error=_last_error(first), left=left,
            rerun_code=code2, rerun_error=_last_error(second),
        )  # fmt: skip
        assert code != 0 and any(words in first for words in FULL_TEXTS)  # Errno 28, or torch's writer saying it
        assert code2 != 0  # no resume from the broken folder: it fails again, until someone deletes by hand


def test_a_kill_inside_the_rotations_delete_resumes_exactly(e2e_root):
    """save_total_limit: 2; SIGKILL while rotation's rmtree of the oldest checkpoint is half done (after the 4th save)."""
    expected = _expected()
    limit = 2
    at = expected[3]  # after checkpoint-30 is written, rotation deletes checkpoint-15
    victim = [s for s in expected if s <= at][-limit - 1]
    config = _config(e2e_root, "disk-rotation", plugin=True, save_total_limit=limit)
    out = harness.output_dir(config)
    code, first = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_KILL_AT": f"{at}:rotation"}, log_name="first.log")
    assert code != 0 and f"[kill_shim] SIGKILL in rotation after checkpoint-{at}: checkpoint-{victim} half deleted" in first
    assert (out / f"checkpoint-{victim}").is_dir()  # half deleted: still there, not whole

    code, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code == 0, second[-4000:]
    observed = harness.observe(out, first + second)
    assert f"resume from checkpoint at {out / f'checkpoint-{at}'}" in second
    assert observed.saved == expected  # each scheduled save once: the first run's, then the rest
    assert observed.kept == expected[-limit:]
    # issue 37: older than the checkpoint resumed from, the half-deleted folder is not judged at the start;
    # the next rotation finishes the delete the kill interrupted (the journal recorded it as its victim), once
    assert f"checkpoint-{victim} is incomplete" not in second
    finished = f"deleted checkpoint-{victim}: a rotation a kill interrupted was deleting it (save_total_limit); finished now"
    assert second.count(finished) == 1 and second.count("deleted") == 1, second[-4000:]
    assert not (out / f"checkpoint-{victim}").exists() and not list(out.glob("incomplete-*"))
    for step in observed.kept:
        assert_complete(out / f"checkpoint-{step}", step)


def test_a_kill_after_the_last_save_before_its_rotation_ends_with_the_limit(e2e_root):
    """save_total_limit: 2; SIGKILL right after the last checkpoint is complete, before rotation deletes the oldest.

    Three checkpoints are left; the rerun resumes at the last step and saves nothing, so no save
    rotates: the rotation at train end (resume.RotateAtTrainEnd) leaves the limit.
    """
    expected = _expected()
    limit = 2
    last = expected[-1]
    config = _config(e2e_root, "disk-last-rotation", plugin=True, save_total_limit=limit)
    out = harness.output_dir(config)
    code, first = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_KILL_AT": f"{last}:after_state"}, log_name="first.log")
    assert code != 0 and f"[kill_shim] SIGKILL just after writing checkpoint-{last}/trainer_state.json" in first
    left = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert left == expected[-limit - 1 :]  # the last save's rotation never ran

    code, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code == 0, second[-4000:]
    assert f"resume from checkpoint at {out / f'checkpoint-{last}'}" in second
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == expected[-limit:]
    assert (out / "model.safetensors").is_file()
    for step in expected[-limit:]:
        assert_complete(out / f"checkpoint-{step}", step)


def test_set_aside_folders_are_bounded(e2e_root):
    """Saves cut three times in a row (kill_shim): at most one incomplete-* is left, the newest; the run ends exact."""
    expected = _expected()
    config = _config(e2e_root, "disk-aside", plugin=True)
    out = harness.output_dir(config)
    cuts = expected[2:4]  # 23, then 30 (the run resumed from 15 saves 23 again, then is cut at 30)
    for n, cut in enumerate(cuts):
        code, log = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_KILL_AT": f"{cut}:before_state"}, log_name=f"cut{n}.log")
        assert code != 0 and f"[kill_shim] SIGKILL just before writing checkpoint-{cut}/trainer_state.json" in log
        aside = sorted(p.name for p in out.glob("incomplete-*"))
        assert aside == ([f"incomplete-checkpoint-{cuts[n - 1]}"] if n else []), aside
    code, log = harness.run_cli_raw(config, env=ENV, log_name="last.log")
    assert code == 0, log[-4000:]
    assert f"deleted incomplete-checkpoint-{cuts[0]}: " in log  # the older set-aside folder
    assert sorted(p.name for p in out.glob("incomplete-*")) == [f"incomplete-checkpoint-{cuts[-1]}"]  # the newest only
    assert harness.observe(out, log).kept == expected


def test_short_of_space_the_packages_own_cut_saves_are_deleted_and_nothing_else(e2e_root, sizes):
    """Issue 19's bound on a real full tmpfs, on provable cut saves only (issue 37).

    Folders built from a real checkpoint of the case: a set-aside folder and a cut save, each with the
    pending-save record a save of this package starts with (``fresh``: the save made the folder), and
    a set-aside folder without one (a stock run's, or a user's). Free space is short of one checkpoint.
    The resume scan is Axolotl's own determine_last_checkpoint, patched, in a fresh process.
    """
    from axolotl_savefix.rules import checkpoints, cleanup

    source = e2e_root / "disk-measure" / "out" / "checkpoint-8"
    with tmpfs(e2e_root / "disk-short-mnt", 5 * sizes["pages"] + sizes["pages"] // 2) as mnt:
        out = mnt / "out"
        out.mkdir()
        shutil.copytree(source, out / "checkpoint-8")
        made = (("incomplete-checkpoint-4", 4, True), ("incomplete-checkpoint-6", 6, False), ("checkpoint-15", 15, True))
        for name, step, own in made:
            shutil.copytree(source, out / name)
            (out / name / "trainer_state.json").unlink()  # cut before its last file
            (out / name / checkpoints.MARKER).unlink(missing_ok=True)
            if own:
                checkpoints.write_pending(out / name, step, True, "test")
        filler = out / "filler"
        with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):  # fill the disk
            while True:
                f.write(b"\0" * PAGE)
        free = os.statvfs(out).f_bavail * os.statvfs(out).f_frsize
        state = (source / "trainer_state.json").stat().st_size
        assert free < state  # short of one checkpoint even after the older own set-aside folder (all but its state) goes
        probe = (
            "import axolotl_savefix, sys\n"
            "axolotl_savefix.apply()\n"
            "from axolotl.utils.dict import DictDefault\n"
            "from axolotl.utils.train import determine_last_checkpoint\n"
            f"print('RESUME', determine_last_checkpoint(DictDefault(output_dir={str(out)!r}, auto_resume_from_checkpoints=True)))\n"
        )
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
        log = done.stdout + done.stderr
        _record("short of space: resume scan", free=free, log=[line for line in log.splitlines() if "axolotl_savefix" in line])
        assert done.returncode == 0, log[-3000:]
        assert f"RESUME {out / 'checkpoint-8'}" in log
        # both provable cut saves gone; the one without a pending record left, with where and how to reclaim it
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-8", "incomplete-checkpoint-6"]
        assert f"deleted incomplete-checkpoint-4: {cleanup.OLDER_OWN_CUT}" in log
        assert "checkpoint-15 is incomplete" in log and f"deleted ({cleanup.SHORT_OF_SPACE})" in log
        assert "incomplete-checkpoint-6; " in log and f"rm -r {out}" in log
