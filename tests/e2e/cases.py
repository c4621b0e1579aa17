"""The e2e case table: data, and which session runs each case. Expected checkpoints come from tests/reference.py."""

from __future__ import annotations

from typing import Any

BASE = {
    "samples": 60,
    "micro_batch": 2,
    "grad_accum": 1,
    "saves_per_epoch": 4,
    "num_epochs": 2,
    "max_steps": None,
    "save_total_limit": None,
    "sample_packing": False,
    "adapter": None,
    # evaluation (issue 5): a validation split and evals_per_epoch
    "val_set_size": 0,
    "evals_per_epoch": None,
    "early_stopping_patience": None,
    "load_best_model_at_end": None,
}

CASES = {
    # the case from the issue: 30 steps per epoch, 4 saves per epoch, 2 epochs
    "reported": {},
    # 6 per epoch over 20 steps: stock saves 5
    "six_per_epoch": {"samples": 40, "saves_per_epoch": 6, "num_epochs": 1},
    # L = 25 batches, G = 3: 9 steps per epoch, Axolotl stops at 17, one short of 2 epochs
    "accum_remainder": {"samples": 50, "grad_accum": 3},
    "one_and_a_half_epochs": {"samples": 40, "saves_per_epoch": 3, "num_epochs": 1.5},
    "max_steps": {"max_steps": 25},
    "limit_zero_keeps_all": {"save_total_limit": 0},
    "limit_three": {"samples": 40, "num_epochs": 1, "save_total_limit": 3},
    # more saves than the 6 steps per epoch: every step saves
    "k_above_steps": {"samples": 12, "saves_per_epoch": 8, "num_epochs": 1},
    "sample_packing": {"sample_packing": True},
    "lora": {"samples": 40, "saves_per_epoch": 6, "num_epochs": 1, "adapter": "lora"},
    # 0 is off, as in stock: Axolotl's default applies (a save at every epoch end)
    "saves_zero": {"saves_per_epoch": 0},
    # one save per epoch, packed, accumulation 2: Axolotl counts floor(7 * 2 / 4) = 3 steps per epoch where the
    # trainer's epoch is ceil(7 / 2) = 4, so stock's interval ceil(9 / 3) = 3 misses every epoch end
    "one_per_epoch_packed": {"saves_per_epoch": 1, "num_epochs": 3, "sample_packing": True, "grad_accum": 2},
}

# Runs with a validation split: 75 samples, 0.2 held out, 60 train (L = 30 with micro batch 2).
EVAL = {"samples": 75, "val_set_size": 0.2, "saves_per_epoch": 2, "evals_per_epoch": 4}
EVAL_CASES = {
    # stock evaluates every ceil(60/8) = 8 steps: none at step 30, the end of epoch 1
    "evals_reported": {},
    # L = 30, G = 4: 8 steps per epoch, 3 evals per epoch off the step grid
    "evals_accum": {"grad_accum": 4, "evals_per_epoch": 3, "saves_per_epoch": 1},
    # 1 eval per epoch over 1 epoch: stock's ratio is 1, so stock never evaluates
    "evals_once": {"num_epochs": 1, "evals_per_epoch": 1, "saves_per_epoch": 1},
    # early stopping implies load_best_model_at_end: every save must follow an eval,
    # and the best checkpoint must survive a limit of 2
    "best_model": {"early_stopping_patience": 100, "save_total_limit": 2},
    # the best model with evals_per_epoch alone: saves_per_epoch unset is Axolotl's default epoch strategy, one save
    # at each epoch end, and every epoch end is an eval target (k/k): aligned, as stock accepts it
    "best_model_evals_only": {"saves_per_epoch": None, "load_best_model_at_end": True},
    # evals_per_epoch: 0, as Axolotl's own examples write "no per-epoch evals": accepted, no evals
    "evals_zero": {"evals_per_epoch": 0},
}


def case(name: str) -> dict:
    table = CASES if name in CASES else EVAL_CASES
    extra = {} if name in CASES else EVAL
    return {**BASE, **extra, **table[name], "name": name}


# the default `tests` session runs the reported cases (the issues' own: saves and evals); the rest of
# the table is the `matrix` session's, adapter cases the `cli` session's (they need a process of their own)
IN_TESTS = ("reported", "evals_reported")


def session_mark(name: str) -> Any:
    """The pytest mark that sends case ``name`` to its session: ``cli``, ``matrix``, or none (``tests``)."""
    import pytest

    if case(name)["adapter"]:
        return pytest.mark.cli
    return () if name in IN_TESTS else pytest.mark.matrix
