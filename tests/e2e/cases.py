"""The e2e case table: data only. Expected checkpoints come from tests/reference.py."""

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
}


def case(name: str) -> dict:
    return {**BASE, **CASES[name], "name": name}
