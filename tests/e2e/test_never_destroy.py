"""Issue 37: a checkpoint is judged by what its own save wrote, and nothing of the user's is destroyed.

The shape Axolotl produces on purpose: its ``CheckpointSaveMixin`` catches the optimizer save's
``NotImplementedError`` (FSDP with torchao's low-bit optimizers) and writes every checkpoint without
``optimizer.pt``/``scheduler.pt`` (tests/e2e/no_optimizer_shim.py makes Transformers raise it). The
reported case: 60 samples, micro batch 2, ``saves_per_epoch: 4``, 2 epochs, the limit unset, then the
same ``output_dir`` with 3 epochs. Stock runs beside: it resumes from checkpoint-60 with a fresh
optimizer. Before the fix the patched rerun deleted 7 checkpoints and trained from step 0.
"""

import hashlib
import json

import cases
import harness
import pytest
import reference
import yaml

pytestmark = [pytest.mark.e2e]

HERE = harness.Path(__file__).parent
ENV = {"PYTHONPATH": str(HERE)}  # no_optimizer_shim.py, signal_shim.py
CASE = cases.case("reported")  # 60 samples, micro batch 2: 30 steps per epoch
L = CASE["samples"] // CASE["micro_batch"]
M2 = reference.axolotl_max_steps(CASE["samples"], CASE["micro_batch"], 1, 2)
M3 = reference.axolotl_max_steps(CASE["samples"], CASE["micro_batch"], 1, 3)
LR, WARMUP = 0.001, 10


def _config(root, name, *, plugin, epochs=2, **changes):
    config = harness.write_config(CASE, root / name, plugin=plugin)
    cfg = yaml.safe_load(config.read_text())
    cfg.update(num_epochs=epochs, auto_resume_from_checkpoints=True, lr_scheduler="cosine", warmup_steps=WARMUP)
    cfg.update(learning_rate=LR, logging_steps=1)
    cfg["plugins"] = ["no_optimizer_shim.NoOptimizerShim", "signal_shim.SignalShim", *(cfg.get("plugins") or [])]
    cfg.update(changes)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def _checkpoint_bytes(out):
    """Every file under every checkpoint-N and set-aside folder of ``out``: relative path -> sha256."""
    found = {}
    for path in sorted(out.rglob("*")):
        top = path.relative_to(out).parts[0]
        if path.is_file() and top.startswith(("checkpoint-", "incomplete-")):
            found[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _folders(out):
    names = [p.name for p in out.iterdir() if p.is_dir() and p.name.startswith(("checkpoint-", "incomplete-"))]
    return sorted(names, key=lambda n: (n.startswith("incomplete-"), int(n.rsplit("-", 1)[1].split(".")[0]), n))


def _lr_at(observed, step):
    return next(e["learning_rate"] for e in observed.log_history if e.get("step") == step and "learning_rate" in e)


def test_the_optimizer_fallback_resumes_from_the_newest_and_every_checkpoint_stays_byte_for_byte(e2e_root):
    config = _config(e2e_root, "fallback-first", plugin=True)
    out = harness.output_dir(config)
    code, log = harness.run_cli_raw(config, env=ENV, log_name="first.log")
    assert code == 0, log[-4000:]
    saves = reference.patched_saves(L, 1, 4, M2)  # 8 15 23 30 38 45 53 60
    assert harness.observe(out, log).saved == saves and _folders(out) == [f"checkpoint-{s}" for s in saves]
    assert "Trainer does not support saving optimizer and scheduler" in log  # Axolotl's own fallback warned
    assert not any((out / f"checkpoint-{s}" / "optimizer.pt").exists() for s in saves)
    assert log.count("was saved without optimizer or scheduler state") == 1  # said at the save, once
    before = _checkpoint_bytes(out)

    longer = harness.variant(config, "fallback-longer", num_epochs=3)
    code, log = harness.run_cli_raw(longer, env=ENV, log_name="second.log")
    assert code == 0, log[-4000:]
    assert f"resume from checkpoint at {out / f'checkpoint-{M2}'}" in log
    assert f"resuming from checkpoint-{M2} (global_step {M2}) without optimizer state" in log
    assert "is incomplete" not in log and "deleted" not in log
    observed = harness.observe(out, log)
    assert observed.saved == [s for s in reference.patched_saves(L, 1, 4, M3) if s > M2]
    after = _checkpoint_bytes(out)
    assert {name: after[name] for name in before} == before  # every file of run 1, byte for byte
    assert _folders(out) == [f"checkpoint-{s}" for s in reference.patched_saves(L, 1, 4, M3)]
    # a fresh optimizer, the schedule where the run was (stock restarts it at warmup's 0)
    assert _lr_at(observed, M2 + 1) == pytest.approx(reference.cosine_lr(M2, WARMUP, M3, LR), rel=1e-6)


def test_stock_resumes_the_optimizer_fallback_from_the_newest(e2e_root):
    """Stock beside: it keeps its limit of 4 and resumes from checkpoint-60, the schedule restarted."""
    config = _config(e2e_root, "fallback-stock-first", plugin=False)
    out = harness.output_dir(config)
    code, log = harness.run_cli_raw(config, env=ENV, log_name="first.log")
    assert code == 0, log[-4000:]
    stock = reference.stock_saves(L, 1, 4, 2, M2)
    assert harness.observe(out, log).kept == reference.kept(stock, reference.stock_limit(None))  # 40 48 56 60
    longer = harness.variant(config, "fallback-stock-longer", num_epochs=3)
    code, log = harness.run_cli_raw(longer, env=ENV, log_name="second.log")
    assert code == 0, log[-4000:]
    assert f"resume from checkpoint at {out / f'checkpoint-{M2}'}" in log
    observed = harness.observe(out, log)
    assert observed.saved and min(observed.saved) > M2 and max(observed.saved) == M3
    assert _lr_at(observed, M2 + 1) == reference.cosine_lr(0, WARMUP, M3, LR) == 0.0


@pytest.mark.parametrize("plugin", [True, False], ids=["patched", "stock"])
def test_without_auto_resume_no_checkpoint_is_removed_or_renamed(plugin, e2e_root):
    """Auto-resume off: the rerun starts from step 0 (stock's), and at its train begin every file of run 1 is there.

    The snapshot is taken by a test callback at ``on_train_begin`` (after everything the start does,
    before the first step and its saves' rotation), beside stock doing the same.
    """
    name = "patched" if plugin else "stock"
    config = _config(e2e_root, f"noauto-{name}-first", plugin=plugin)
    out = harness.output_dir(config)
    code, log = harness.run_cli_raw(config, env=ENV, log_name="first.log")
    assert code == 0, log[-4000:]
    before = _checkpoint_bytes(out)
    again = harness.variant(config, f"noauto-{name}-again", auto_resume_from_checkpoints=False, max_steps=2)
    at_begin = again.parent / "begin.json"
    code, log = harness.run_cli_raw(again, env={**ENV, "SAVEFIX_BEGIN_SNAPSHOT": str(at_begin)}, log_name="second.log")
    assert code == 0, log[-4000:]
    assert harness.observe(out, log).saved[-1] == 2  # trained from step 0: nothing resumed (stock also saves step 1)
    assert json.loads(at_begin.read_text()) == before  # nothing removed, renamed or changed before training
    assert "is incomplete" not in log and "moved to" not in log


def test_a_notice_under_the_fallback_saves_a_complete_checkpoint_and_the_rerun_resumes_there(e2e_root):
    """SIGTERM at step 19 with the optimizer fallback: checkpoint-19 is complete as saved; the rerun resumes from it."""
    config = _config(e2e_root, "fallback-notice", plugin=True)
    out = harness.output_dir(config)
    code, log = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_SIGNAL_AT": "19:SIGTERM"}, log_name="first.log")
    assert code == 143, log[-4000:]
    assert "preempted by SIGTERM at step 19: checkpoint-19 saved (complete)" in log
    before = _checkpoint_bytes(out)
    code, log = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code == 0, log[-4000:]
    assert f"resume from checkpoint at {out / 'checkpoint-19'}" in log
    assert "is incomplete" not in log
    after = _checkpoint_bytes(out)
    older = {n: h for n, h in before.items() if n.startswith(("checkpoint-8/", "checkpoint-15/"))}
    assert {n: after[n] for n in older} == older
    assert harness.observe(out, log).saved == [s for s in reference.patched_saves(L, 1, 4, M2) if s > 19]
