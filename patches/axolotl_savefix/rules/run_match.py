"""Does a checkpoint belong to this run? Pure: no Axolotl, no torch.

Auto-resume (``auto_resume_from_checkpoints``) takes the newest ``checkpoint-N``
of ``output_dir`` whatever run wrote it. Transformers then restores
``global_step`` N and trains from there with this run's settings. Three ways
that goes wrong without a word (issue 22):

* **Past the end.** N is at or past this run's last step (``max_steps``): the
  loop does nothing, and the model the run saves as final is the checkpoint's
  (Transformers issue 26961; a new run in a reused ``output_dir``).
* **Another run's data or batch geometry.** N counts optimizer steps of another
  data set or batch size: the data skipped on resume and the epoch position are
  wrong. The keys that decide it are :data:`FATAL`.
* **No optimizer or scheduler state, by choice** (``save_only_model``):
  Transformers resumes with a fresh optimizer and the learning-rate schedule from
  step 0 (its rule in ``Trainer._load_optimizer_and_scheduler``: both files, or
  neither is loaded). A checkpoint whose save *could not* write the optimizer
  (Axolotl's fallback, issue 37) is not stopped: no checkpoint of that run has
  one, so the resume goes on as stock's, with one line, the scheduler put at the step.

Changes that keep the past valid (:data:`FINE`: more epochs, another save/eval
cadence or limit) resume with one line naming them. ``savefix_resume_anyway:
true`` turns each stop into a warning and resumes as stock does (the scheduler
is then put at the resumed step).

The fingerprint is recorded in every checkpoint's ``trainer_state.json`` by the
save protocol (:class:`~axolotl_savefix._infra.journal.SaveFixCheckpointRecord`); a
checkpoint written without it (stock) is checked for the past-the-end case and
the missing optimizer state only, which need no record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .keys import RESUME_ANYWAY as ANYWAY_KEY

# what makes global_step N mean the same samples seen: the data and the batch geometry
FATAL = (
    "dataset_hash",  # Axolotl's prepared-dataset hash (data files, prompt format, tokenizer, sequence_len, packing)
    "base_model",
    "sequence_len",
    "sample_packing",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "world_size",
)
# what may change and keep the steps already trained valid
FINE = ("num_epochs", "max_steps", "saves_per_epoch", "save_steps", "evals_per_epoch", "eval_steps", "save_total_limit")
CONFIG_KEYS = tuple(k for k in (*FATAL, *FINE) if k not in ("dataset_hash", "world_size", "max_steps"))

OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
SCHEDULER_FILE = "scheduler.pt"


class RunMismatchError(ValueError):
    """Auto-resume found a checkpoint this run cannot continue from (past its end, other data or batches, no optimizer)."""

    __module__ = "axolotl_savefix"  # its public name: tracebacks and the guide say axolotl_savefix.RunMismatchError


def fingerprint(cfg: Mapping[str, Any], *, dataset_hash: str | None, world_size: int, max_steps: int | None = None) -> dict:
    """The keys of a run that a checkpoint records (``max_steps``: the run's last step, once known)."""
    found = {key: _plain(cfg.get(key)) for key in CONFIG_KEYS}
    found.update(dataset_hash=dataset_hash, world_size=int(world_size), max_steps=max_steps)
    return found


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def differences(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for each key whose value differs.

    A key either side does not record is skipped, and so is an unknown ``dataset_hash`` (``None``: not an SFT run).
    """
    found = []
    for key in keys:
        if key not in old or key not in new or old[key] == new[key]:
            continue
        if key == "dataset_hash" and None in (old[key], new[key]):
            continue
        found.append((key, old[key], new[key]))
    return found


def lacks_training_state(names: Iterable[tuple[str, bool]]) -> list[str]:
    """What a checkpoint folder lacks for Transformers to restore the optimizer and the LR schedule.

    ``names``: ``(name, is_dir)`` for each entry of the folder. Transformers' rule
    (``_load_optimizer_and_scheduler``): the optimizer (``optimizer.pt``/``.bin``,
    or a folder with ``optimizer`` in its name: FSDP's sharded state) and
    ``scheduler.pt``. A DeepSpeed checkpoint (``global_step*`` folder) keeps both
    inside it and is taken as whole.
    """
    entries = list(names)
    if any(is_dir and name.startswith("global_step") for name, is_dir in entries):
        return []
    files = {name for name, is_dir in entries if not is_dir}
    lacks = []
    has_optimizer = bool(files & set(OPTIMIZER_FILES)) or any(is_dir and "optimizer" in name for name, is_dir in entries)
    if not has_optimizer:
        lacks.append("the optimizer state (optimizer.pt)")
    if SCHEDULER_FILE not in files:
        lacks.append(f"the learning-rate scheduler state ({SCHEDULER_FILE})")
    return lacks


def auto_resumes(cfg: Mapping[str, Any], update: bool = True) -> bool:
    """Whether Axolotl's ``determine_last_checkpoint(cfg, update)`` resumes automatically: where this package may act.

    No explicit ``resume_from_checkpoint``, an ``output_dir``, a training start (``update``; not the
    merge of sharded weights, which passes False) and ``auto_resume_from_checkpoints`` on.
    """
    explicit, auto = cfg.get("resume_from_checkpoint"), cfg.get("auto_resume_from_checkpoints")
    return bool(not explicit and cfg.get("output_dir") and update and auto)


def _shown(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # num_epochs: 2.0 as the user wrote it, 2
    return repr(value)


def _pairs(items: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{key} {_shown(old)} -> {_shown(new)}" for key, old, new in items)


@dataclass
class Decision:
    """What the resume seam does: stop with ``error``, else log ``warnings`` and ``notes``; ``reset_scheduler``."""

    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reset_scheduler: bool = False


def decide(
    checkpoint: str,
    step: int,
    max_steps: int,
    *,
    auto: bool,
    anyway: bool,
    recorded: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    lacks: list[str],
    model_only: bool = True,
) -> Decision:
    """The verdict on resuming this run (its last step ``max_steps``) from ``checkpoint`` at ``global_step`` ``step``.

    ``auto``: chosen by auto-resume (an explicit ``resume_from_checkpoint`` is
    the user's choice: its mismatches are a warning, never a stop). ``recorded``:
    the checkpoint's fingerprint, ``None`` for a checkpoint written without one.
    ``lacks``: :func:`lacks_training_state` of the folder. ``model_only``: the checkpoint was saved with
    ``save_only_model`` (its record says so, or, for a checkpoint without one, this run's config): a
    missing optimizer then stops the resume (issue 22); otherwise its save could not write one (Axolotl's
    optimizer fallback, issue 37) and the resume goes on as stock's, a fresh optimizer, with one line and
    the scheduler put at the step. ``anyway``: ``savefix_resume_anyway``, every stop becomes a warning.

    Past the end: a checkpoint beyond ``max_steps`` stops an auto-resume; one exactly at
    ``max_steps`` only when its record names another length (another run): this run's own last
    checkpoint, or one without a record, resumes (nothing is trained; the run's end, the final
    model, is written), as after a kill during the final save or the last rotation.
    """
    out = Decision()
    stops: list[str] = []
    fix_auto = (
        f"Set a new output_dir for this run, or set resume_from_checkpoint: {checkpoint} if you mean to continue it, "
        f"or set {ANYWAY_KEY}: true to resume anyway."
    )
    # this run's own last checkpoint (killed after it, e.g. during the final model save or the rotation):
    # resuming trains nothing and finishes the run's end; a checkpoint without a record is taken as this run's
    own_end = step == max_steps and (recorded is None or not recorded or recorded.get("max_steps") in (None, max_steps))
    if auto and step >= max_steps and not own_end:
        stops.append(
            f"auto-resume found {checkpoint} at global_step {step}, at or past this run's last step ({max_steps}): "
            "nothing would be trained, and the model saved at the end would be that checkpoint's, another run's. " + fix_auto
        )
    fatal = differences(recorded or {}, current, FATAL)
    if fatal:
        text = f"{checkpoint} was written by a run with other data or batches: {_pairs(fatal)}"
        if auto:
            stops.append(
                f"auto-resume found {checkpoint}, written by a run with other data or batches ({_pairs(fatal)}): "
                f"its global_step {step} counts other samples, so the data skipped on resume and the epoch would be "
                "wrong. " + fix_auto
            )
        else:
            out.warnings.append(text + "; resuming from it as resume_from_checkpoint asks")
    fine = differences(recorded or {}, current, FINE)
    if fine and not (auto and stops):
        out.notes.append(f"resuming from {checkpoint} (global_step {step}) with changed settings: {_pairs(fine)}")
    absent = " and no ".join(s.removeprefix("the ") for s in lacks)
    if lacks and step < max_steps and model_only:
        stops.append(
            f"{checkpoint} has no {absent} (saved with save_only_model): a resume would start a fresh optimizer (its "
            f"moments lost) and the learning-rate schedule from step 0 instead of step {step}. Resume from a checkpoint "
            f"that has both, set a new output_dir to start over, or set {ANYWAY_KEY}: true to resume with a fresh "
            f"optimizer (the scheduler is then put at step {step})."
        )
    elif lacks and step < max_steps:
        out.notes.append(
            f"resuming from {checkpoint} (global_step {step}) without {absent.replace(' and no ', ' or ')}: its save wrote "
            "none (the optimizer could not be saved), so a fresh optimizer starts, as in stock Axolotl; the "
            f"learning-rate schedule is put at step {step} (stock restarts it at step 0)"
        )
    if stops and not anyway:
        out.error = " ".join(stops)
        return out
    for stop in stops:
        out.warnings.append(f"{ANYWAY_KEY}: true, resuming anyway: " + stop.split(". ")[0])
    out.reset_scheduler = bool(lacks) and step < max_steps
    return out


def save_only_model_warning(cfg: Mapping[str, Any]) -> str | None:
    """The config-time warning when ``save_only_model`` meets auto-resume: its checkpoints cannot be resumed from."""
    if not (cfg.get("save_only_model") and cfg.get("auto_resume_from_checkpoints")):
        return None
    return (
        "save_only_model: true with auto_resume_from_checkpoints: true: the checkpoints hold no optimizer or scheduler "
        "state, so a resume would restart the optimizer and the learning-rate schedule; axolotl_savefix stops such a "
        f"resume. Remove save_only_model to make checkpoints resumable, or set {ANYWAY_KEY}: true to accept it."
    )
