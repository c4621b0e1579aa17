"""Issue 22: a resume that matches the run, no eval repeated after a resume, no silent model-only resume.

Each run is a fresh ``axolotl train`` process with ``auto_resume_from_checkpoints: true``, as the
public reports had it. Stock Axolotl runs beside the patched one; its outcome is asserted as the
defect it is (the test fails if stock ever changes). Expected steps and learning rates come from
tests/reference.py.
"""

import json
import re
import shutil

import cases
import harness
import pytest
import reference
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.preemption]

HERE = harness.Path(__file__).parent
ENV = {"PYTHONPATH": str(HERE)}  # kill_shim.py
ERROR = re.compile(r"RunMismatchError: (.*)")
TRAINED_STEP = re.compile(r"'grad_norm'")  # one dict per optimizer step (logging_steps: 1)


def _config(root, name, case, *, plugin, **changes):
    config = harness.write_config(case, root / name, plugin=plugin)
    cfg = yaml.safe_load(config.read_text())
    cfg["auto_resume_from_checkpoints"] = True
    cfg["plugins"] = ["kill_shim.KillShim", *(cfg.get("plugins") or [])]
    cfg.update(changes)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def _seed(output_dir, source_checkpoint):
    """A new output_dir holding only a copy of ``source_checkpoint`` (as a run stopped right after it left it)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source_checkpoint, output_dir / source_checkpoint.name)


def _steps(case):
    L = case["samples"] * (1 - case["val_set_size"]) // case["micro_batch"]
    return int(L), reference.axolotl_max_steps(
        int(L * case["micro_batch"]), case["micro_batch"], case["grad_accum"], case["num_epochs"]
    )


# --- 1. auto-resume into another run's checkpoints (Transformers issue 26961) --------------------------------------


def test_auto_resume_past_this_runs_end_stops_and_a_longer_run_continues(e2e_root):
    case = cases.case("reported")  # 60 samples, micro batch 2, 4 saves per epoch, 2 epochs: 60 steps
    L, M = _steps(case)
    first = _config(e2e_root, "match-first", case, plugin=True)
    out = harness.output_dir(first)
    code, log = harness.run_cli_raw(first, env=ENV, log_name="first.log")
    assert code == 0, log[-4000:]
    run1 = reference.patched_saves(L, 1, 4, M)
    assert harness.observe(out, log).saved == run1

    # run 2: the same output_dir, 1 epoch (30 steps), another learning rate
    shorter = harness.variant(first, "match-shorter", num_epochs=1, learning_rate=0.002)
    code, log = harness.run_cli_raw(shorter, env=ENV, log_name="second.log")
    M2 = reference.axolotl_max_steps(case["samples"], case["micro_batch"], 1, 1)
    assert code != 0
    errors = ERROR.findall(log)
    assert errors and errors[-1].startswith(
        f"auto-resume found checkpoint-{M} at global_step {M}, at or past this run's last step ({M2})"
    )
    assert "Set a new output_dir" in errors[-1] and "resume_from_checkpoint:" in errors[-1]
    assert not TRAINED_STEP.search(log) and harness.observe(out, log).saved == []
    assert harness.observe(out, log).kept == run1  # nothing written, nothing rotated

    # a longer run 2: 3 epochs, resumes from 60 and trains to 90, with one line naming the change
    longer = harness.variant(first, "match-longer", num_epochs=3)
    code, log = harness.run_cli_raw(longer, env=ENV, log_name="third.log")
    assert code == 0, log[-4000:]
    M3 = reference.axolotl_max_steps(case["samples"], case["micro_batch"], 1, 3)
    assert f"resume from checkpoint at {out / f'checkpoint-{M}'}" in log
    assert harness.observe(out, log).saved == [s for s in reference.patched_saves(L, 1, 4, M3) if s > M]
    assert f"with changed settings: num_epochs 2 -> 3, max_steps {M} -> {M3}" in log


def test_stock_auto_resume_past_the_end_trains_nothing_and_says_nothing(e2e_root):
    """The defect, recorded: stock exits 0 having trained no step (a copy of the patched run's checkpoint-60)."""
    case = cases.case("reported")
    L, M = _steps(case)
    out_src = e2e_root / "match-first" / "out"  # the patched test's run 1 when it ran, else this test's own
    if not (out_src / f"checkpoint-{M}" / "trainer_state.json").is_file():
        first = _config(e2e_root, "match-stock-first", case, plugin=True)
        out_src = harness.output_dir(first)
        code, log = harness.run_cli_raw(first, env=ENV, log_name="first.log")
        assert code == 0, log[-4000:]
        assert harness.observe(out_src, log).saved == reference.patched_saves(L, 1, 4, M)
    stock = _config(e2e_root, "match-stock", case, plugin=False, num_epochs=1, learning_rate=0.002)
    out = harness.output_dir(stock)
    _seed(out, out_src / f"checkpoint-{M}")
    code, log = harness.run_cli_raw(stock, env=ENV, log_name="second.log")
    assert code == 0, log[-4000:]
    assert f"resume from checkpoint at {out / f'checkpoint-{M}'}" in log
    assert not TRAINED_STEP.search(log) and harness.observe(out, log).saved == []
    assert "RunMismatchError" not in log and "[axolotl_savefix]" not in log


# --- 2. an eval repeated after a resume (Axolotl issue 3305) -------------------------------------------------------

EVAL_CASE = {**cases.case("evals_reported"), "saves_per_epoch": 4, "evals_per_epoch": 4}  # 75 samples, 0.2 held out


def _kill_and_resume(root, name, case, cut, *, plugin, explicit=False, **changes):
    config = _config(root, name, case, plugin=plugin, **changes)
    out = harness.output_dir(config)
    code, log = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_KILL_AT": f"{cut}:after_state"}, log_name="first.log")
    assert code != 0 and "[kill_shim] SIGKILL" in log
    if explicit:
        config = harness.variant(
            config, name + "-explicit", auto_resume_from_checkpoints=False, resume_from_checkpoint=str(out / f"checkpoint-{cut}")
        )
    code, log = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code == 0, log[-4000:]
    # auto-resume: Axolotl's line; an explicit resume: Axolotl logs none, the restored step is in the saves after it
    assert explicit or f"resume from checkpoint at {out / f'checkpoint-{cut}'}" in log
    return harness.observe(out, log)


def test_auto_resume_evaluates_each_step_once_per_epoch_schedule(e2e_root):
    L, M = _steps(EVAL_CASE)
    saves = reference.patched_saves(L, 1, 4, M)
    observed = _kill_and_resume(e2e_root, "evals-once", EVAL_CASE, saves[2], plugin=True)
    assert observed.evals == reference.patched_evals(L, 1, 4, M)  # 0 8 15 23 30 ...: 23 once
    assert observed.saved == [s for s in saves if s > saves[2]]


def test_explicit_resume_evaluates_each_step_once_integer_steps(e2e_root):
    case = {**EVAL_CASE, "saves_per_epoch": None, "evals_per_epoch": None}
    L, M = _steps(case)
    interval = 8
    saves = reference.interval_steps(L, 1, interval, M)
    observed = _kill_and_resume(
        e2e_root, "evals-once-steps", case, saves[1], plugin=True, explicit=True, save_steps=interval, eval_steps=interval
    )
    assert observed.evals == [0, *reference.interval_steps(L, 1, interval, M)]  # 16 once
    assert observed.saved == [s for s in saves if s > saves[1]]


def test_stock_auto_resume_evaluates_the_resumed_step_twice(e2e_root):
    """The defect, recorded: stock's resumed step (its third save) is evaluated again by eval_on_start."""
    L, M = _steps(EVAL_CASE)
    cut = reference.stock_saves(L, 1, 4, EVAL_CASE["num_epochs"], M)[2]
    observed = _kill_and_resume(e2e_root, "evals-twice-stock", EVAL_CASE, cut, plugin=False)
    expected = reference.stock_evals(L, 1, 4, EVAL_CASE["num_epochs"], M)
    assert observed.evals == sorted([*expected, cut])  # every eval once, the resumed step twice


# --- 3. auto-resume from a model-only checkpoint (Axolotl issues 2548, 2744) ----------------------------------------

MODEL_ONLY = {**cases.case("reported"), "samples": 40, "num_epochs": 1}  # 20 steps, saves at 5 10 15 20
LR, WARMUP = 0.001, 10
MODEL_ONLY_KEYS = {"save_only_model": True, "lr_scheduler": "cosine", "warmup_steps": WARMUP, "learning_rate": LR}


def _lr_at(observed, step):
    return next(e["learning_rate"] for e in observed.log_history if e.get("step") == step and "learning_rate" in e)


def test_model_only_checkpoint_warns_at_config_time_and_is_not_resumed_silently(e2e_root):
    L, M = _steps(MODEL_ONLY)
    saves = reference.patched_saves(L, 1, 4, M)
    resumed = saves[2]  # 15
    first = _config(e2e_root, "model-only-first", MODEL_ONLY, plugin=True, **MODEL_ONLY_KEYS)
    code, log = harness.run_cli_raw(first, env=ENV, log_name="first.log")
    assert code == 0, log[-4000:]
    assert "WARNING: save_only_model: true with auto_resume_from_checkpoints: true" in log
    checkpoint = harness.output_dir(first) / f"checkpoint-{resumed}"
    assert not (checkpoint / "optimizer.pt").exists()

    # the same command after a stop right after checkpoint-15: stops with the clear error
    stopped = _config(e2e_root, "model-only-stopped", MODEL_ONLY, plugin=True, **MODEL_ONLY_KEYS)
    _seed(harness.output_dir(stopped), checkpoint)
    code, log = harness.run_cli_raw(stopped, env=ENV, log_name="second.log")
    assert code != 0
    error = ERROR.findall(log)[-1]
    assert error.startswith(f"checkpoint-{resumed} has no optimizer state (optimizer.pt) and no learning-rate scheduler state")
    assert f"the learning-rate schedule from step 0 instead of step {resumed}" in error
    assert not TRAINED_STEP.search(log)

    # the user says to go on: a fresh optimizer, the scheduler at the resumed step
    anyway = _config(e2e_root, "model-only-anyway", MODEL_ONLY, plugin=True, savefix_resume_anyway=True, **MODEL_ONLY_KEYS)
    _seed(harness.output_dir(anyway), checkpoint)
    code, log = harness.run_cli_raw(anyway, env=ENV, log_name="second.log")
    assert code == 0, log[-4000:]
    assert "WARNING: savefix_resume_anyway: true, resuming anyway:" in log
    observed = harness.observe(harness.output_dir(anyway), log)
    # Transformers logs at step s the rate that step used: the scheduler stepped s - 1 times
    assert _lr_at(observed, resumed + 1) == pytest.approx(reference.cosine_lr(resumed, WARMUP, M, LR), rel=1e-6)
    assert _lr_at(observed, resumed + 1) > 0


def test_stock_resumes_a_model_only_checkpoint_with_the_schedule_restarted(e2e_root):
    """The defect, recorded: stock resumes with no word, the learning rate back to warmup's 0."""
    L, M = _steps(MODEL_ONLY)
    resumed = reference.patched_saves(L, 1, 4, M)[2]
    first = _config(e2e_root, "model-only-stock-first", MODEL_ONLY, plugin=False, **MODEL_ONLY_KEYS)
    code, log = harness.run_cli_raw(first, env=ENV, log_name="first.log")
    assert code == 0, log[-4000:]
    source = harness.output_dir(first) / f"checkpoint-{resumed}"
    stock = _config(e2e_root, "model-only-stock", MODEL_ONLY, plugin=False, **MODEL_ONLY_KEYS)
    _seed(harness.output_dir(stock), source)
    code, log = harness.run_cli_raw(stock, env=ENV, log_name="second.log")
    assert code == 0, log[-4000:]
    observed = harness.observe(harness.output_dir(stock), log)
    assert _lr_at(observed, resumed + 1) == reference.cosine_lr(0, WARMUP, M, LR) == 0.0
    assert json.loads((source / "trainer_state.json").read_text())["global_step"] == resumed
