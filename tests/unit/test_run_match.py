"""run_match: which checkpoint differences stop an auto-resume, which are named and let through (pure)."""

import pytest

from axolotl_savefix.rules.run_match import (
    ANYWAY_KEY,
    FATAL,
    decide,
    differences,
    fingerprint,
    lacks_training_state,
    save_only_model_warning,
)

CFG = {
    "base_model": "/m",
    "sequence_len": 64,
    "sample_packing": False,
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "num_epochs": 2,
    "saves_per_epoch": 4,
}
FULL = [("model.safetensors", False), ("optimizer.pt", False), ("scheduler.pt", False), ("trainer_state.json", False)]


def fp(**changes):
    return {**fingerprint({**CFG, **changes}, dataset_hash="abc", world_size=1, max_steps=60), **changes}


def verdict(step=15, max_steps=60, *, auto=True, anyway=False, recorded=None, current=None, lacks=()):
    return decide(
        "checkpoint-15" if step == 15 else f"checkpoint-{step}",
        step,
        max_steps,
        auto=auto,
        anyway=anyway,
        recorded=fp() if recorded is None else recorded,
        current=current or fp(),
        lacks=list(lacks),
    )


def test_a_matching_checkpoint_resumes_with_no_word():
    out = verdict()
    assert (out.error, out.warnings, out.notes, out.reset_scheduler) == (None, [], [], False)


@pytest.mark.parametrize("step", [61, 200])
def test_auto_resume_past_the_last_step_stops(step):
    out = verdict(step, 60)
    assert out.error.startswith(f"auto-resume found checkpoint-{step} at global_step {step}, at or past this run's last step (60)")


@pytest.mark.parametrize("step", [60, 61, 200])
def test_auto_resume_at_or_past_the_last_step_of_another_run_stops(step):
    out = verdict(step, 60, recorded=fp(max_steps=90), current=fp(max_steps=60))
    assert out.error.startswith(f"auto-resume found checkpoint-{step} at global_step {step}, at or past this run's last step (60)")
    assert "nothing would be trained" in out.error and "new output_dir" in out.error and "resume_from_checkpoint:" in out.error


@pytest.mark.parametrize("recorded", [None, "own"])
def test_this_runs_own_last_checkpoint_resumes_to_finish_the_run(recorded):
    """Killed after its last checkpoint (during the final model save or the last rotation): the same command ends it."""
    own = fp(max_steps=60)
    out = verdict(60, 60, recorded=own if recorded else None, current=own)
    assert out.error is None and out.warnings == []


def test_past_the_end_needs_no_record():
    assert verdict(60, 30, recorded={}).error  # a stock checkpoint


def test_explicit_resume_past_the_end_is_the_users_choice():
    assert verdict(60, 30, auto=False).error is None


@pytest.mark.parametrize("key", [k for k in FATAL if k != "dataset_hash"] + ["dataset_hash"])
def test_other_data_or_batches_stop_naming_key_old_and_new(key):
    new = fp(**{key: "other"})
    out = verdict(current=new)
    assert f"{key} {fp()[key]!r} -> 'other'" in out.error
    assert verdict(current=new, auto=False).error is None  # explicit: a warning
    assert verdict(current=new, auto=False).warnings


def test_several_fatal_keys_are_all_named():
    out = verdict(current=fp(micro_batch_size=4, sequence_len=128))
    assert "sequence_len 64 -> 128" in out.error and "micro_batch_size 2 -> 4" in out.error


def test_changes_that_keep_the_past_valid_resume_with_one_line():
    out = verdict(current=fp(num_epochs=3, max_steps=90, saves_per_epoch=2, save_total_limit=3))
    assert out.error is None and len(out.notes) == 1
    assert "num_epochs 2 -> 3, max_steps 60 -> 90, saves_per_epoch 4 -> 2, save_total_limit None -> 3" in out.notes[0]


def test_unknown_dataset_hash_is_not_a_difference():
    assert differences({"dataset_hash": None}, {"dataset_hash": "x"}, ["dataset_hash"]) == []
    assert verdict(recorded={**fp(), "dataset_hash": None}).error is None


def test_model_only_checkpoint_stops_unless_the_user_says_go_on():
    lacks = lacks_training_state([("model.safetensors", False), ("trainer_state.json", False)])
    assert lacks == ["the optimizer state (optimizer.pt)", "the learning-rate scheduler state (scheduler.pt)"]
    out = verdict(lacks=lacks, auto=False)
    assert out.error.startswith("checkpoint-15 has no optimizer state (optimizer.pt) and no learning-rate scheduler state")
    assert "from step 0 instead of step 15" in out.error and ANYWAY_KEY in out.error
    go_on = verdict(lacks=lacks, anyway=True)
    assert go_on.error is None and go_on.reset_scheduler and go_on.warnings[0].startswith(f"{ANYWAY_KEY}: true, resuming anyway")


def test_anyway_turns_every_stop_into_a_warning():
    out = verdict(60, 30, anyway=True, current=fp(micro_batch_size=4))
    assert out.error is None and len(out.warnings) == 2 and not out.reset_scheduler


@pytest.mark.parametrize(
    ("entries", "lacks"),
    [
        (FULL, []),
        ([("optimizer.bin", False), ("scheduler.pt", False)], []),
        ([("optimizer_0", True), ("scheduler.pt", False)], []),  # FSDP sharded optimizer
        ([("global_step15", True)], []),  # DeepSpeed keeps both inside
        ([("optimizer.pt", False)], ["the learning-rate scheduler state (scheduler.pt)"]),
    ],
)
def test_training_state_follows_transformers_rule(entries, lacks):
    assert lacks_training_state(entries) == lacks


def test_config_time_warning_only_when_save_only_model_meets_auto_resume():
    assert save_only_model_warning({"save_only_model": True}) is None
    assert save_only_model_warning({"auto_resume_from_checkpoints": True}) is None
    text = save_only_model_warning({"save_only_model": True, "auto_resume_from_checkpoints": True})
    assert text.startswith("save_only_model: true with auto_resume_from_checkpoints: true") and ANYWAY_KEY in text


def test_the_plan_shows_the_save_only_model_warning():
    from axolotl_savefix.rules import plan

    settings = plan.Settings.from_config({"save_only_model": True, "auto_resume_from_checkpoints": True, "saves_per_epoch": 2})
    text = plan.render(plan.make_plan(settings, 10, 10))
    assert "  WARNING: save_only_model: true with auto_resume_from_checkpoints: true" in text
    assert not any("save_only_model" in line for line in plan.log_lines(plan.make_plan(settings, 10, 10)))
    assert "WARNING" not in plan.render(plan.make_plan(plan.Settings.from_config({"saves_per_epoch": 2}), 10, 10))
