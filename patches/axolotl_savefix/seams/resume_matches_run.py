"""A resume matches the run, restores what the run kept, and never evaluates a step twice (issue 22).

``auto_resume_from_checkpoints`` takes the newest ``checkpoint-N`` whatever run wrote it;
Transformers then restores ``global_step`` N and trains with this run's settings, without a word,
also past this run's end, with other data or batches, or without optimizer state by choice
(:mod:`rules.run_match` decides which).

Targets (``_infra.targets``):

* ``get_callbacks``: the run's fingerprint goes into every checkpoint's run record
  (a record field of the journal's run record); :class:`RunMatchCallback` stops, at train begin of a resumed
  run (before the first step and before ``eval_on_start``), a resume into a checkpoint that does not
  belong to the run, naming what differs and the fix (``savefix_resume_anyway: true`` goes on); a
  checkpoint whose save could not write its optimizer (Axolotl's fallback) resumes with one line and
  the scheduler put at the step; :class:`NoEvalOnResumeCallback` turns ``eval_on_start`` off for a
  resumed run (the restored step was evaluated before the stop), unless a preemption notice cut that
  evaluation (``savefix_pending_eval.json``) or the config sets ``eval_on_start: true`` itself;
* ``validate_config``: carries ``savefix_resume_anyway`` past Axolotl's schema and warns when
  ``save_only_model`` meets auto-resume;
* ``relora_on_train_begin``: ReLoRA's logged ``num_lora_restarts`` starts at the restarts made so far
  after any resume (:func:`rules.plan.relora_restarts`).

Where the resume is checked: at train begin, not in ``determine_last_checkpoint``: the run's last
step (``max_steps``) is only known once the dataloader is built. Upstream: docs/upstream/series
(the conditional ``eval_on_start``; the past-the-end check as a warning).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .._infra import hooks
from .._infra.log import log_once
from ..rules import checkpoints, keys, run_match
from ..rules.plan import relora_restarts
from ..rules.records import eval_pending

NAME = "resume_matches_run"


class NoEvalOnResumeCallback(TrainerCallback):
    """Skip ``eval_on_start`` on a resumed run: the restored step was evaluated before the stop.

    ``args.eval_on_start`` is turned off in ``on_train_begin`` (Transformers reads
    it right after) when ``global_step`` > 0, and put back at train end. ``explicit``: the config
    itself sets ``eval_on_start: true`` (a key from Axolotl 0.21): the user's choice, kept.
    """

    def __init__(self, explicit: bool = False) -> None:
        self.explicit = explicit
        self.restore: bool | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
        output_dir = getattr(args, "output_dir", None)
        if state.global_step > 0 and output_dir and eval_pending(Path(output_dir) / f"checkpoint-{state.global_step}"):
            log_once(
                f"eval-on-resume:{state.global_step}",
                f"resumed at global_step {state.global_step}: evaluating it again (a preemption notice cut or "
                "skipped its evaluation)",
            )
            return control
        if state.global_step > 0 and getattr(args, "eval_on_start", False) and not self.explicit:
            self.restore, args.eval_on_start = args.eval_on_start, False
            log_once(
                f"no-eval-on-resume:{state.global_step}",
                f"resumed at global_step {state.global_step}: not evaluating it again (eval_on_start is for a fresh run)",
            )
        return control

    def on_train_end(self, args: Any, _state: Any, control: Any, **_: Any) -> Any:
        if self.restore is not None:
            args.eval_on_start, self.restore = self.restore, None
        return control


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _dataset_hash(builder: Any) -> str | None:
    """Axolotl's prepared-dataset hash of the train split (what ``dataset_prepared_path`` is keyed by); None if unknown."""
    try:
        from axolotl.utils.data.shared import generate_dataset_hash_from_config

        tokenizer = getattr(builder, "tokenizer", None)
        datasets = builder.cfg.get("datasets")
        if tokenizer is None or not datasets:
            return None
        return str(generate_dataset_hash_from_config(builder.cfg, datasets, tokenizer.name_or_path))
    except Exception:  # noqa: BLE001 - a builder without SFT datasets (RL, pretraining): compared without it
        return None


def _put_scheduler_at(scheduler: Any, step: int) -> bool:
    """Put a fresh learning-rate scheduler at ``step`` (as if it had been stepped ``step`` times)."""
    import warnings

    inner = getattr(scheduler, "scheduler", scheduler)  # Accelerate's AcceleratedScheduler wraps it
    if not hasattr(inner, "last_epoch") or not hasattr(inner, "step"):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": on purpose here
        inner.last_epoch = step - 1
        inner.step()
    return True


class RunMatchCallback(TrainerCallback):
    """At train begin of a resumed run: stop when the checkpoint does not belong to the run (:func:`run_match.decide`).

    Raises :class:`run_match.RunMismatchError` (before the first step and before
    ``eval_on_start``) naming what was found, why, and the fix.
    """

    def __init__(self, cfg: Any, fingerprint: dict) -> None:
        self.cfg = cfg
        self.fingerprint = fingerprint
        # Axolotl's builder runs before determine_last_checkpoint: set now means set by the user
        self.explicit = cfg.get("resume_from_checkpoint")

    def on_train_begin(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> Any:
        checkpoint = self.cfg.get("resume_from_checkpoint")
        if not checkpoint or not state.global_step or not Path(str(checkpoint)).is_dir():
            return control
        folder = Path(str(checkpoint))
        saved, _ = checkpoints.read_state(folder)  # bounded; None when missing or not JSON
        run, note = checkpoints.load_record(saved)
        if note:
            log_once(f"bad-input:{folder}/{note}", f"{folder.name}/{note}", logging.WARNING)
        recorded = (run or {}).get("fingerprint") or None
        model_only = bool(run.get("save_only_model")) if run else bool(self.cfg.get("save_only_model"))
        current = {**self.fingerprint, "world_size": int(args.world_size), "max_steps": int(state.max_steps)}
        verdict = run_match.decide(
            folder.name,
            int(state.global_step),
            int(state.max_steps),
            auto=not self.explicit,
            anyway=bool(self.cfg.get(keys.RESUME_ANYWAY)),
            recorded=recorded,
            current=current,
            lacks=run_match.lacks_training_state((p.name, p.is_dir()) for p in folder.iterdir()),
            model_only=model_only,
        )
        if verdict.error:
            raise run_match.RunMismatchError(verdict.error)
        for line in verdict.warnings:
            log_once(f"run-match:{line}", line, logging.WARNING)
        for line in verdict.notes:
            log_once(f"run-match:{line}", line)
        if verdict.reset_scheduler and lr_scheduler is not None and _put_scheduler_at(lr_scheduler, int(state.global_step)):
            log_once(f"run-match-scheduler:{folder}", f"learning-rate scheduler put at step {state.global_step}")
        return control


def _relora_restarts(on_train_begin: Any, self: Any, args: Any, state: Any, *rest: Any, **kwargs: Any) -> Any:
    """``ReLoRACallback.on_train_begin``'s layer: after any resume, ``num_lora_restarts`` counts the restarts made so far."""
    step = int(getattr(state, "global_step", 0) or 0)
    every = getattr(self, "jagged_restart_steps", None) or getattr(self, "relora_steps", None)  # 0.17 renamed it
    if step > 0 and getattr(self, "num_lora_restarts", None) == 0 and isinstance(every, int) and every > 0:
        self.num_lora_restarts = relora_restarts(step, every)
    return on_train_begin(self, args, state, *rest, **kwargs)


def _fingerprint(builder: Any) -> dict:
    return run_match.fingerprint(builder.cfg, dataset_hash=_dataset_hash(builder), world_size=_world_size())


def _warn_save_only_model(call: Any, cfg: Any, *args: Any, **kwargs: Any) -> Any:
    validated = call(cfg, *args, **kwargs)
    warning = run_match.save_only_model_warning(validated)
    if warning and not keys.resume_anyway(cfg):  # the raw config: the carried key is put back outside this layer
        log_once("save-only-model-resume", warning, logging.WARNING)
    return validated


def install() -> None:
    hooks.carry(keys.RESUME_ANYWAY, NAME, 20, keys.resume_anyway)  # first: Axolotl's schema would drop it
    hooks.add(hooks.Layer("validate_config", NAME, 5, _warn_save_only_model))
    hooks.add_record_field("fingerprint", NAME, _fingerprint)
    hooks.add_callbacks("run match", NAME, lambda builder: [RunMatchCallback(builder.cfg, _fingerprint(builder))])
    hooks.add_callbacks(
        "no eval on resume",
        NAME,
        lambda builder: (
            [NoEvalOnResumeCallback(builder.cfg.get("eval_on_start") is True)] if builder.eval_dataset is not None else []
        ),
    )
    hooks.add(hooks.Layer("relora_on_train_begin", NAME, 20, _relora_restarts))
