"""Issue 31 item 2: a run resumed in its second epoch trains on the same samples, in the same order, as one never stopped.

A tiny run of 2 epochs (the "reported" case: 60 samples, micro batch 2, 30 steps per epoch, shuffled,
no sample packing) with ``auto_resume_from_checkpoints: true`` is killed by a real SIGKILL right after
a save (tests/e2e/kill_shim.py), then the same command trains it to the end. Its per-step training
loss (``logging_steps: 1``, read from the last checkpoint's ``trainer_state.json``) must match an
uninterrupted run of the same config and seed at every step after the resume: relative difference
below 1e-4. Samples differ in length and words, so a resume that replays another epoch's order (as
Transformers issue 40690 reports for 4.57: ``set_epoch`` applied after ``skip_first_batches``)
changes the losses by far more than that.

The cuts: the first epoch's last save (the resume starts epoch 2 with nothing to skip) and a save in
the middle of epoch 2 (the resume skips batches of epoch 2: the sampler must be at epoch 1's order).

The same runs log Axolotl's token counters (``include_tkps: true``: ``tokens/total`` and
``tokens/trainable`` at every logged step, Axolotl issue 3940): the resumed run's must be the
uninterrupted run's at every step, patched; stock's auto-resume restarts them at zero.
"""

import inspect

import cases
import harness
import pytest
import reference
import yaml
from test_preemption_notice import losses

pytestmark = [pytest.mark.e2e, pytest.mark.fidelity]

HERE = harness.Path(__file__).parent
ENV = {"PYTHONPATH": str(HERE)}  # kill_shim.py
CASE = cases.case("reported")  # patched saves 8 15 23 30 38 45 53 60; stock 8 16 24 32 40 48 56 60
L = CASE["samples"] // CASE["micro_batch"]  # 30 batches per epoch (grad_accum 1: one step each)
M = reference.axolotl_max_steps(CASE["samples"], CASE["micro_batch"], CASE["grad_accum"], CASE["num_epochs"])
TOLERANCE = 1e-4  # relative, per step
TOKEN_COUNTERS = ("tokens/total", "tokens/trainable")  # AxolotlTrainer.log, with include_tkps
_runs: dict[str, list[dict]] = {}  # each run's log_history by its folder: the loss and the token tests share the runs


def _config(root, name, *, plugin):
    config = harness.write_config(CASE, root / name, plugin=plugin)
    cfg = yaml.safe_load(config.read_text())
    assert cfg["sample_packing"] is False and "curriculum_sampling" not in cfg  # a shuffled order: Transformers' RandomSampler
    cfg["auto_resume_from_checkpoints"] = True
    cfg["include_tkps"] = True  # Axolotl's default, set so the token counters are logged whatever the default becomes
    cfg["plugins"] = ["kill_shim.KillShim", *(cfg.get("plugins") or [])]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def _uninterrupted(root, name, *, plugin) -> list[dict]:
    """The ``log_history`` of a run never stopped (run once per session)."""
    key = str(root / name)
    if key not in _runs:
        history = harness.run_cli(_config(root, name, plugin=plugin), env=ENV).log_history
        assert sorted(losses(history)) == list(range(1, M + 1)), sorted(losses(history))
        _runs[key] = history
    return _runs[key]


@pytest.fixture(scope="module")
def straight(e2e_root):
    """The uninterrupted runs' per-step losses, with the plugin and without (run once each, when first asked)."""

    def get(plugin: bool) -> dict[int, float]:
        return losses(_uninterrupted(e2e_root, _straight_name(plugin), plugin=plugin))

    return get


def _straight_name(plugin: bool) -> str:
    return f"fidelity-straight-{'patched' if plugin else 'stock'}"


def _killed_and_resumed(root, name, cut, *, plugin) -> dict[int, float]:
    """Per-step losses of the run killed right after its save at ``cut`` and resumed by the same command."""
    return losses(_killed_and_resumed_history(root, name, cut, plugin=plugin))


def _killed_and_resumed_history(root, name, cut, *, plugin) -> list[dict]:
    key = str(root / name)
    if key in _runs:
        return _runs[key]
    config = _config(root, name, plugin=plugin)
    out = harness.output_dir(config)
    code, log = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_KILL_AT": f"{cut}:after_state"}, log_name="first.log")
    assert code != 0 and "[kill_shim] SIGKILL" in log, log[-4000:]
    code, log = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code == 0, log[-4000:]
    assert f"resume from checkpoint at {out / f'checkpoint-{cut}'}" in log
    history = harness.observe(out, log).log_history
    assert sorted(losses(history)) == list(range(1, M + 1)), sorted(losses(history))
    _runs[key] = history
    return history


def relative_differences(resumed: dict[int, float], straight: dict[int, float], after: int) -> dict[int, float]:
    """|resumed - straight| / |straight| at every step after ``after`` (the step resumed from)."""
    return {s: abs(resumed[s] - straight[s]) / abs(straight[s]) for s in sorted(straight) if s > after}


def _report(differences: dict[int, float]) -> str:
    worst = sorted(differences, key=differences.get, reverse=True)[:5]
    return f"max relative loss difference {max(differences.values()):.3g}; worst steps " + ", ".join(
        f"{s}: {differences[s]:.3g}" for s in worst
    )


# 30: the first epoch's last save (epoch 2 starts from the restored state); 45: mid epoch 2, 15 batches skipped
@pytest.mark.parametrize("cut", [30, 45])
def test_resume_in_epoch_2_trains_on_the_uninterrupted_runs_samples(e2e_root, straight, cut):
    assert cut in reference.patched_saves(L, 1, CASE["saves_per_epoch"], M) and cut >= L
    resumed = _killed_and_resumed(e2e_root, f"fidelity-{cut}", cut, plugin=True)
    expected = straight(True)
    assert all(resumed[s] == expected[s] for s in range(1, cut + 1))  # the first run's own steps, from its checkpoint
    differences = relative_differences(resumed, expected, cut)
    print(f"[fidelity] patched, cut {cut}: {_report(differences)}")
    assert max(differences.values()) < TOLERANCE, _report(differences)


def test_stock_resume_in_epoch_2_measured(e2e_root, straight):
    """Stock beside: the same kill in the middle of epoch 2 (its save at 40) and resume, plugin off.

    Transformers before 5.0 replays epoch 0's order there (issue 40690): recorded as the defect, so the
    test fails if stock changes; from 5.0 stock matches.
    """
    from axolotl_savefix._infra import targets

    cut = 40
    assert cut in reference.stock_saves(L, 1, CASE["saves_per_epoch"], CASE["num_epochs"], M) and cut > L
    resumed = _killed_and_resumed(e2e_root, "fidelity-stock-40", cut, plugin=False)
    differences = relative_differences(resumed, straight(False), cut)
    print(f"[fidelity] stock, cut {cut}: {_report(differences)}")
    if targets.present("skip_first_batches"):  # the epoch-order back-port's range: Transformers < 5.0
        # the wrong samples: a step trained on another batch has another loss, so most resumed steps differ
        wrong = sum(d >= TOLERANCE for d in differences.values())
        assert wrong > len(differences) // 2, _report(differences)
    else:
        assert max(differences.values()) < TOLERANCE, _report(differences)


def token_counters(log_history) -> dict[int, dict[str, int]]:
    """Axolotl's logged token counters (``TOKEN_COUNTERS``) at each training log step."""
    return {e["step"]: {k: int(e[k]) for k in TOKEN_COUNTERS if k in e} for e in log_history if "loss" in e}


def _straight_counters(root, *, plugin: bool) -> dict[int, dict[str, int]]:
    counters = token_counters(_uninterrupted(root, _straight_name(plugin), plugin=plugin))
    assert all(set(c) == set(TOKEN_COUNTERS) for c in counters.values()), counters  # logged at every step
    assert all(counters[s][k] < counters[s + 1][k] for s in range(1, M) for k in TOKEN_COUNTERS)  # counted, step by step
    return counters


def stock_restores_counters_on_auto_resume() -> bool:
    """Whether stock Axolotl restores the token counters on an auto-resume (derived from the installed release).

    It does where ``TokensPerSecondCallback`` reads the config at train begin (its ``cfg`` parameter: the
    fix of issue 3940, Axolotl 0.20) and reads the file under the name the trainer writes it
    (0.16 on; 0.13.2 to 0.15.0 write ``tokens_state.`` and read ``tokens_state.json``).
    """
    import importlib

    from axolotl_savefix._infra import targets

    reader = importlib.import_module(targets.TOKENS_MODULE)
    reads_config = "cfg" in inspect.signature(reader.TokensPerSecondCallback).parameters
    writer = importlib.import_module(targets.TARGETS["tokens_file_written"].module)
    return reads_config and reader.TOKENS_STATE_FILE == writer.TOKENS_STATE_FILE


@pytest.mark.parametrize("cut", [30, 45])
def test_resumed_token_counters_are_the_uninterrupted_runs(e2e_root, cut):
    """Patched, the same runs as the loss test: ``tokens/total`` and ``tokens/trainable`` at every step equal."""
    expected = _straight_counters(e2e_root, plugin=True)
    resumed = token_counters(_killed_and_resumed_history(e2e_root, f"fidelity-{cut}", cut, plugin=True))
    wrong = {s: (resumed.get(s), expected[s]) for s in expected if resumed.get(s) != expected[s]}
    print(f"[fidelity] patched token counters, cut {cut}: {len(expected) - len(wrong)}/{len(expected)} steps equal")
    assert not wrong, dict(list(wrong.items())[:5])


def test_stock_auto_resume_token_counters_measured(e2e_root):
    """Stock beside, the stock loss test's runs (cut at 40): the counters restart at zero after the auto-resume.

    Derived, not copied: the resumed run counts only the steps it trained, so at step s it logs the
    uninterrupted run's count at s less the count at the checkpoint (where the resumed epoch trains the
    same samples: Transformers 5.0 on), and below what it logged at the checkpoint's step in any case.
    Where stock restores them (:func:`stock_restores_counters_on_auto_resume`), they equal.
    """
    from axolotl_savefix._infra import targets

    cut = 40
    expected = _straight_counters(e2e_root, plugin=False)
    resumed = token_counters(_killed_and_resumed_history(e2e_root, "fidelity-stock-40", cut, plugin=False))
    assert all(resumed[s] == expected[s] for s in range(1, cut + 1))  # the first run's own steps, from its checkpoint
    after = [s for s in sorted(expected) if s > cut]
    print(f"[fidelity] stock token counters, cut {cut}: step {cut} {resumed[cut]}, step {cut + 1} {resumed[cut + 1]}")
    if stock_restores_counters_on_auto_resume():
        assert all(resumed[s] == expected[s] for s in after)
        return
    assert all(resumed[cut + 1][k] < resumed[cut][k] for k in TOKEN_COUNTERS), (resumed[cut], resumed[cut + 1])
    if not targets.present("skip_first_batches"):  # Transformers 5.0 on: the same samples after the resume
        restarted = {s: {k: expected[s][k] - expected[cut][k] for k in TOKEN_COUNTERS} for s in after}
        assert all(resumed[s] == restarted[s] for s in after), [(s, resumed[s], restarted[s]) for s in after[:3]]
