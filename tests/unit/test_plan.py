"""The plan (pure) against the independent reference, and the disk rule's bounds."""

import json
import subprocess
import sys

import reference
from hypothesis import given
from hypothesis import strategies as st

from axolotl_savefix.rules import disk
from axolotl_savefix.rules.plan import Settings, make_plan, render


@given(
    L=st.integers(1, 200),
    G=st.integers(1, 8),
    k=st.integers(1, 12),
    epochs=st.integers(1, 4),
    limit=st.sampled_from([None, 0, 1, 3]),
)
def test_plan_matches_the_reference_walk(L, G, k, epochs, limit):
    M = reference.axolotl_max_steps(L, 1, G, epochs)  # one sample per batch: Axolotl's count
    s = Settings(num_epochs=epochs, grad_accum=G, saves_per_epoch=k, save_total_limit=limit)
    plan = make_plan(s, L, M)
    stock = reference.stock_saves(L, G, k, epochs, M)
    patched = reference.patched_saves(L, G, k, M)
    assert plan.stock.saved == stock
    assert plan.stock.kept == reference.kept(stock, reference.stock_limit(limit))
    assert plan.patched.saved == patched
    assert plan.patched.kept == reference.kept(patched, limit)  # unset (size unknown) or 0: all
    assert plan.requested == patched


@given(L=st.integers(1, 200), G=st.integers(1, 8), k=st.integers(1, 12), epochs=st.integers(1, 3))
def test_plan_evals_match_the_reference(L, G, k, epochs):
    M = reference.axolotl_max_steps(L, 1, G, epochs)
    s = Settings(num_epochs=epochs, grad_accum=G, evals_per_epoch=k, has_eval=True)
    plan = make_plan(s, L, M)
    assert plan.stock.evals == reference.stock_evals(L, G, k, epochs, M)
    assert plan.patched.evals == reference.patched_evals(L, G, k, M)


def test_no_validation_set_or_eval_strategy_no_means_no_evals():
    assert make_plan(Settings(evals_per_epoch=4), 30, 30).patched.evals == []
    assert make_plan(Settings(evals_per_epoch=4, has_eval=True, eval_strategy="no"), 30, 30).patched.evals == []


def test_the_step_count_quirk_is_shown():
    # L = 25 batches, G = 3: 9 steps per epoch; Axolotl's ceil(50 * 2 / 6) = 17 stops one short of 18
    plan = make_plan(Settings(num_epochs=2, grad_accum=3, saves_per_epoch=4), 25, 17)
    assert plan.epochs_end_at == 18
    assert "the last epoch ends at step 18, the run stops at 17" in render(plan)
    # an explicit max_steps is the user's choice: no note
    assert not make_plan(Settings(num_epochs=2, grad_accum=3, saves_per_epoch=4, max_steps=17), 25, 17).notes


def test_lost_checkpoints_stock_vs_patched():
    stock = make_plan(Settings(num_epochs=2, saves_per_epoch=4), 30, 60)
    stock_kept = reference.kept(reference.stock_saves(30, 1, 4, 2, 60), reference.stock_limit(None))
    assert stock.lost == [s for s in reference.patched_saves(30, 1, 4, 60) if s not in stock_kept]
    patched = make_plan(Settings(num_epochs=2, saves_per_epoch=4, patched=True), 30, 60)
    assert patched.lost == []
    # an explicit limit is the user's choice: nothing counts as lost when the positions are right
    assert make_plan(Settings(num_epochs=2, saves_per_epoch=4, patched=True, save_total_limit=2), 30, 60).lost == []


@given(
    planned=st.integers(1, 500),
    size=st.integers(1, 10**9),
    available=st.integers(0, 10**12),
    margin=st.floats(0, 0.9),
)
def test_fitting_limit_bounds(planned, size, available, margin):
    limit = disk.fitting_limit(planned, size, available, margin)
    assert disk.MIN_KEPT <= limit or limit == planned
    assert limit <= max(planned, disk.MIN_KEPT)
    budget = int(available * (1 - margin))
    if limit == planned:
        assert planned * size <= budget or planned <= disk.MIN_KEPT
    elif limit > disk.MIN_KEPT:
        # rotation writes before it deletes: limit + 1 checkpoints at the peak, and they fit
        assert (limit + 1) * size <= budget < (limit + 2) * size


def test_default_limit_keeps_all_when_they_fit_and_lowers_with_a_warning_flag_when_not():
    mb = 2**20
    assert disk.resolve_default_limit(8, mb, 100 * mb) == (8, False)
    assert disk.resolve_default_limit(2, mb, 100 * mb) == (4, False)  # upstream's 4 stays the floor
    assert disk.resolve_default_limit(8, mb, 5 * mb) == (3, True)  # 4.5 MB budget: 3 kept + 1 being written
    assert disk.resolve_default_limit(8, mb, mb) == (2, True)  # never below 2
    assert disk.resolve_default_limit(8, None, mb) == (8, False)  # size unknown: keep all


def test_free_bytes_reads_the_real_file_system(tmp_path):
    assert disk.free_bytes(tmp_path / "not" / "yet") == disk.free_bytes(tmp_path) > 0
    (tmp_path / "a").write_bytes(b"x" * 1000)
    assert disk.apparent_bytes(tmp_path) == 1000
    assert disk.dir_bytes(tmp_path) >= disk.block_bytes(tmp_path) > 0  # allocated: whole blocks, the folder too


def test_cli_steps_per_epoch_needs_no_axolotl_and_exits_1_on_loss(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text(f"num_epochs: 4\nsaves_per_epoch: 8\noutput_dir: {tmp_path / 'out'}\n")
    cmd = [sys.executable, "-m", "axolotl_savefix", "plan", str(config), "--steps-per-epoch", "100", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stderr  # stock: the issue-1642 case loses checkpoints
    data = json.loads(proc.stdout)
    assert len(data["stock"]["saved"]) == reference.stock_saves(100, 1, 8, 4, 400).__len__()
    assert data["patched"]["saved"] == reference.patched_saves(100, 1, 8, 400)
    assert "axolotl" not in proc.stderr.lower()  # nothing imported, nothing logged
    config.write_text(config.read_text() + "plugins:\n  - axolotl_savefix.SaveFixPlugin\n")
    proc = subprocess.run(cmd[:-1], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
    assert "every one of the 32 checkpoints asked for is saved and kept" in proc.stdout


def test_zero_per_epoch_is_off_and_the_plan_names_the_fallback():
    plan = make_plan(Settings(num_epochs=2, saves_per_epoch=0, evals_per_epoch=0, has_eval=True, patched=True), 30, 60)
    assert plan.patched.saved == plan.stock.saved == [30, 60]  # Axolotl's default: every epoch end
    assert plan.patched.evals == plan.stock.evals == []
    text = render(plan)
    assert "saves_per_epoch: 0 is off, as in stock Axolotl; saves: every epoch end" in text
    assert "evals_per_epoch: 0 is off, as in stock Axolotl; evals: none" in text
    with_steps = make_plan(Settings(saves_per_epoch=0, save_steps=7), 30, 30)
    assert with_steps.patched.saved == [7, 14, 21, 28, 30] and "saves: save_steps: 7" in render(with_steps)


def test_negative_limit_keeps_all_stock_and_patched():
    plan = make_plan(Settings(num_epochs=2, saves_per_epoch=4, save_total_limit=-1), 30, 60)
    assert plan.stock.kept == plan.stock.saved and plan.patched.kept == plan.patched.saved


def test_one_epoch_is_singular():
    assert "; 1 epoch;" in render(make_plan(Settings(num_epochs=1, saves_per_epoch=2), 10, 10))
    assert "; 2 epochs;" in render(make_plan(Settings(num_epochs=2, saves_per_epoch=2), 10, 20))


@given(max_steps=st.integers(1, 300), every=st.integers(1, 40), saved=st.sets(st.integers(1, 300)))
def test_relora_restart_folders_are_the_restarts_on_step_begin_not_already_saved(max_steps, every, saved):
    from axolotl_savefix.rules.plan import relora_restart_folders

    # ReLoRACallback.on_step_begin: a restart (and a checkpoint-N folder) when global_step > 0 and
    # global_step % every == 0, for the global_step each step begins at: 0 .. max_steps - 1
    restarts = [g for g in range(max_steps) if g > 0 and g % every == 0]
    assert relora_restart_folders(max_steps, every, sorted(saved)) == [g for g in restarts if g not in saved]
    assert relora_restart_folders(max_steps, None, sorted(saved)) == []
