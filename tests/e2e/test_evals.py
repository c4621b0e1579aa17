"""evals_per_epoch on real Axolotl with a validation split, stock vs patched.

Eval steps are read from ``trainer_state.json``'s log history; expected steps
come from tests/reference.py.
"""

import cases
import harness
import pytest
import reference

import axolotl_savefix

pytestmark = pytest.mark.e2e


def run(name, variant, root):
    case = cases.case(name)
    config = harness.write_config(case, root / f"{name}-{variant}", plugin=False)
    if variant == "patched":
        assert axolotl_savefix.apply()
    try:
        return case, harness.run_in_process(config)
    finally:
        axolotl_savefix.revert()


@pytest.mark.parametrize("variant", ["stock", "patched"])
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=cases.session_mark(n)) for n in ("evals_reported", "evals_accum", "evals_once")]
)
def test_exact_eval_steps(name, variant, e2e_root):
    case, observed = run(name, variant, e2e_root)
    L, G, M = observed.batches_per_epoch(case["grad_accum"]), case["grad_accum"], observed.max_steps
    k_eval, k_save, epochs = case["evals_per_epoch"], case["saves_per_epoch"], case["num_epochs"]
    if variant == "stock":
        evals, saved = reference.stock_evals(L, G, k_eval, epochs, M), reference.stock_saves(L, G, k_save, epochs, M)
    else:
        evals, saved = reference.patched_evals(L, G, k_eval, M), reference.patched_saves(L, G, k_save, M)
    harness.record(f"{name}-{variant}", observed, evals=evals, saved=saved)
    assert observed.evals == evals
    assert observed.saved == saved


def test_best_checkpoint_follows_an_eval_and_survives_the_limit(e2e_root):
    case, observed = run("best_model", "patched", e2e_root)
    L, G, M = observed.batches_per_epoch(case["grad_accum"]), case["grad_accum"], observed.max_steps
    saved = reference.patched_saves(L, G, case["saves_per_epoch"], M)
    assert observed.saved == saved
    assert observed.evals == reference.patched_evals(L, G, case["evals_per_epoch"], M)
    assert set(saved) <= set(observed.evals)  # every save follows an eval at its own step
    losses = {step: observed.eval_loss(step) for step in observed.evals}
    best = reference.best_step(saved, losses)
    assert best is not None
    assert observed.best_model_checkpoint is not None
    assert observed.best_model_checkpoint.endswith(f"checkpoint-{best}")
    assert observed.kept == reference.kept_with_best(saved, case["save_total_limit"], best)
    assert best in observed.kept
    # early stopping asks for the best model at the end, as stock's builder gives it on aligned ratios
    import torch

    args = torch.load(next((e2e_root / "best_model-patched").rglob("training_args.bin")), weights_only=False)
    assert args.load_best_model_at_end is True


def test_best_model_with_evals_per_epoch_alone_saves_each_epoch_end_and_loads_the_best(e2e_root):
    """``load_best_model_at_end: true`` with ``evals_per_epoch`` and no ``saves_per_epoch``: Axolotl's default saves
    once per epoch, at each epoch end, and each epoch end is an eval target (k/k). Stock accepts it (and drops the
    best model: its rule reads ``save_steps``); the fix accepts it, saves at every epoch end and loads the best."""
    import torch

    case, observed = run("best_model_evals_only", "patched", e2e_root)
    L, G, M = observed.batches_per_epoch(case["grad_accum"]), case["grad_accum"], observed.max_steps
    saved = reference.epoch_end_saves(L, G, M)
    assert len(saved) == case["num_epochs"]  # one checkpoint per epoch: the end of epoch 1 and of the run
    assert observed.saved == saved
    assert observed.kept == saved  # save_total_limit unset: every scheduled checkpoint is kept
    assert observed.evals == reference.patched_evals(L, G, case["evals_per_epoch"], M)
    assert set(saved) <= set(observed.evals)  # every save follows an eval at its own step
    args = torch.load(next(observed.output_dir.rglob("training_args.bin")), weights_only=False)
    assert args.load_best_model_at_end is True
    # the best checkpoint from trainer_state.json's log history, by Transformers' rule (reference.best_step: an eval
    # with a lower loss at a step with no save moves nothing), and the final model in output_dir is that checkpoint's
    best = reference.best_step(saved, {step: observed.eval_loss(step) for step in observed.evals})
    assert best is not None
    assert observed.best_model_checkpoint is not None
    assert observed.best_model_checkpoint.endswith(f"checkpoint-{best}")
    final = _weights(observed.output_dir / "model.safetensors")
    assert _same(final, _weights(observed.output_dir / f"checkpoint-{best}" / "model.safetensors"))
    if best != saved[-1]:  # the CPU run: best 30 of 30, 60: the last model was replaced by the best one
        assert not _same(final, _weights(observed.output_dir / f"checkpoint-{saved[-1]}" / "model.safetensors"))


@pytest.mark.matrix
def test_stock_best_model_with_evals_per_epoch_alone_is_dropped(e2e_root):
    """The same config on stock: the same saves (each epoch end), evals off the epoch end, and no best model loaded."""
    import torch

    case, observed = run("best_model_evals_only", "stock", e2e_root)
    L, G, M = observed.batches_per_epoch(case["grad_accum"]), case["grad_accum"], observed.max_steps
    saved = reference.epoch_end_saves(L, G, M)
    assert observed.saved == saved
    assert observed.evals == reference.stock_evals(L, G, case["evals_per_epoch"], case["num_epochs"], M)
    args = torch.load(next(observed.output_dir.rglob("training_args.bin")), weights_only=False)
    assert args.load_best_model_at_end is False  # stock's rule reads save_steps, which saves unset leave unset
    final = _weights(observed.output_dir / "model.safetensors")
    assert _same(final, _weights(observed.output_dir / f"checkpoint-{saved[-1]}" / "model.safetensors"))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _same(a, b):
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_stock_best_model_sees_stale_metrics(e2e_root):
    """The defect, on stock: saves every ceil(M/4) steps, evals every ceil(M/8): most saves have no eval."""
    case = {**cases.case("best_model"), "early_stopping_patience": None}
    config = harness.write_config(case, e2e_root / "best-stock", plugin=False)
    cfg_text = config.read_text() + "load_best_model_at_end: true\nmetric_for_best_model: eval_loss\n"
    config.write_text(cfg_text)
    observed = harness.run_in_process(config)
    L, G, M = observed.batches_per_epoch(case["grad_accum"]), case["grad_accum"], observed.max_steps
    saved = reference.stock_saves(L, G, case["saves_per_epoch"], case["num_epochs"], M)
    assert observed.saved == saved
    assert observed.evals == reference.stock_evals(L, G, case["evals_per_epoch"], case["num_epochs"], M)
    assert not set(saved[:-1]) <= set(observed.evals)
    # and the best checkpoint is whatever Transformers' rule makes of that (often none at all)
    best = reference.best_step(saved, {step: observed.eval_loss(step) for step in observed.evals})
    if best is None:
        assert observed.best_model_checkpoint is None
    else:
        assert observed.best_model_checkpoint.endswith(f"checkpoint-{best}")
