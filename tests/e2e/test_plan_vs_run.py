"""The plan against real runs, and the disk rule on a run whose checkpoints do not all fit.

The plan comes from ``axolotl_savefix.cli.plan_from_data`` (Axolotl loads the
config and prepares the data); the run is a real in-process Axolotl fine-tune.
"""

import functools
import logging

import cases
import harness
import pytest
import reference
import transformers.trainer
import yaml

import axolotl_savefix
from axolotl_savefix import cli
from axolotl_savefix.rules import disk

pytestmark = pytest.mark.e2e


def _plan(config):
    raw = yaml.safe_load(config.read_text())
    return cli.plan_from_data(config, raw)


def _run(config, patched):
    if patched:
        assert axolotl_savefix.apply()
    try:
        return harness.run_in_process(config)
    finally:
        axolotl_savefix.revert()


@pytest.mark.parametrize(
    ("name", "variant"),
    [
        pytest.param(name, variant, marks=cases.session_mark(name))
        for name, variant in (
            ("reported", "stock"),
            ("reported", "patched"),
            ("accum_remainder", "patched"),
            ("sample_packing", "patched"),
            ("evals_accum", "stock"),
            ("evals_accum", "patched"),
            ("saves_zero", "patched"),
        )
    ],
)
def test_plan_equals_the_run(name, variant, e2e_root):
    config = harness.write_config(cases.case(name), e2e_root / f"plan-{name}-{variant}", plugin=False)
    plan = _plan(config)
    observed = _run(config, variant == "patched")
    predicted = plan.patched if variant == "patched" else plan.stock
    assert plan.max_steps == observed.max_steps
    assert predicted.saved == observed.saved
    assert predicted.kept == observed.kept
    assert predicted.evals == observed.evals


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_disk_rule_keeps_what_fits_and_warns_once(e2e_root, monkeypatch):
    case = cases.case("reported")  # 8 checkpoints scheduled
    config = harness.write_config(case, e2e_root / "disk-small", plugin=False)
    out = e2e_root / "disk-small" / "out"
    one = _plan(config).checkpoint_bytes
    # a file system that holds only this output_dir, with room for 5 estimated checkpoints:
    # enough for the rule's floor (2 kept + 1 being written) and the margin, not for all 8
    capacity = 5 * one
    monkeypatch.setattr(disk, "free_bytes", lambda path: capacity - disk.dir_bytes(out))
    peaks = []
    rotate = transformers.trainer.rotate_checkpoints

    @functools.wraps(rotate)  # its signature stays Transformers' (the preemption patch checks it)
    def measuring_rotate(*args, **kwargs):  # the peak: the new checkpoint written, none deleted yet
        peaks.append(disk.dir_bytes(out))
        return rotate(*args, **kwargs)

    monkeypatch.setattr(transformers.trainer, "rotate_checkpoints", measuring_rotate)
    capture = _Capture()
    logging.getLogger("axolotl_savefix").addHandler(capture)
    try:
        observed = _run(config, patched=True)
    finally:
        logging.getLogger("axolotl_savefix").removeHandler(capture)

    L = observed.batches_per_epoch(case["grad_accum"])
    saved = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], observed.max_steps)
    assert observed.saved == saved  # every checkpoint is still written ...
    assert disk.MIN_KEPT <= len(observed.kept) < len(saved)  # ... but not all are kept
    assert observed.kept == saved[-len(observed.kept) :]  # the newest survive
    # one rotation after each save, one more at train end (resume.RotateAtTrainEnd); the disk never filled
    assert len(peaks) == len(saved) + 1 and max(peaks) <= capacity
    warnings = [m for m in capture.messages if "save_total_limit unset: the 8 scheduled checkpoints" in m]
    assert len(warnings) == 1, capture.messages
    assert f"keeping the newest {len(observed.kept)}" in warnings[0]
    assert any(m.startswith("plan: 30 steps per epoch, stops at step 60") for m in capture.messages)
