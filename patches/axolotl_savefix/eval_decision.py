"""Defect 4: ``evals_per_epoch`` becomes a float ratio of the run, like ``saves_per_epoch``.

Targets:

* ``axolotl.utils.config.normalize_config`` (and its ``axolotl.cli.config``
  copy): runs with ``evals_per_epoch`` hidden, so no ``eval_steps`` ratio is set;
* ``axolotl.utils.config.validate_config`` (and its copy): checks that saves
  line up with evals for ``load_best_model_at_end`` / ``early_stopping_patience``
  (:func:`~axolotl_savefix.checks.check_best_model_alignment`), and lets
  ``early_stopping_patience`` through with per-epoch keys (Axolotl's validator
  asks for ``save_steps`` and ``eval_steps``, which a per-epoch run does not set);
* ``TrainerBuilderBase._configure_save_and_eval_strategy``: Transformers keeps
  the ``steps`` strategy with a never-reached interval, ``eval_on_start`` as
  upstream (on, unless the config's ``eval_on_start`` says otherwise);
* ``TrainerBuilderBase.get_callbacks``: adds
  :class:`~axolotl_savefix.per_epoch.EvalsPerEpochCallback`.

Evaluations then run at the first step that reaches each target
j/``evals_per_epoch`` of every epoch, and once at the last step. Runs without a
validation set, or with ``eval_strategy: no``, do not evaluate, as upstream.

A resumed step is never evaluated twice (issue 22), for every schedule
(per epoch, integer ``eval_steps``), under auto-resume and an explicit
``resume_from_checkpoint``: :class:`NoEvalOnResumeCallback`. The second eval
comes from Transformers' ``eval_on_start`` (which Axolotl turns on with any eval
schedule): ``_inner_training_loop`` evaluates right after ``on_train_begin``
at whatever ``global_step`` the checkpoint restored, and that step was
evaluated before the stop (an eval precedes the save at the same step).
Axolotl's ``SkipEvalOnResumeCallback`` guards ``on_step_end`` only, so it
misses this eval even when it is added; and it is added only when
``resume_from_checkpoint`` is set before the builder runs, which auto-resume
does later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ._log import log_once
from ._patching import key_hidden, patch_item, wraps
from ._targets import require
from .checks import check_best_model_alignment, check_eval_config
from .per_epoch import NEVER, EvalsPerEpochCallback
from .save_decision import CALLBACKS_TARGET, STRATEGY_TARGET
from .save_steps import TARGET as NORMALIZE_TARGET

VALIDATE_TARGET = ("axolotl.utils.config", "validate_config", ("cfg",))


class NoEvalOnResumeCallback(TrainerCallback):
    """Skip ``eval_on_start`` on a resumed run: the restored step was evaluated before the stop.

    ``args.eval_on_start`` is turned off in ``on_train_begin`` (Transformers reads
    it right after) when ``global_step`` > 0, and put back at train end.
    """

    def __init__(self) -> None:
        self.restore: bool | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
        from .preemption import eval_pending

        output_dir = getattr(args, "output_dir", None)
        if state.global_step > 0 and output_dir and eval_pending(Path(output_dir) / f"checkpoint-{state.global_step}"):
            log_once(
                f"eval-on-resume:{state.global_step}",
                f"resumed at global_step {state.global_step}: evaluating it again (a preemption notice cut or "
                "skipped its evaluation)",
            )
            return control
        if state.global_step > 0 and getattr(args, "eval_on_start", False):
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


def apply() -> None:
    module, name, validate = require(*VALIDATE_TARGET)

    @wraps(validate)
    def validate_config(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        patience = cfg.get("early_stopping_patience")
        if not (patience and cfg.get("saves_per_epoch") and cfg.get("evals_per_epoch")):
            validated = validate(cfg, *args, **kwargs)
        else:
            # per-epoch saves and evals (aligned: checked below): Axolotl's own check wants step intervals
            with key_hidden(cfg, "early_stopping_patience"):
                validated = validate(cfg, *args, **kwargs)
            validated["early_stopping_patience"] = patience
        # on Axolotl's validated values (its schema coerces and refuses first, as in stock)
        check_eval_config(validated)
        check_best_model_alignment(validated)
        return validated

    patch_item(module, name, validate_config, rebind_copies=True)

    module, name, normalize = require(*NORMALIZE_TARGET)

    @wraps(normalize)
    def normalize_config(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        if not cfg.get("evals_per_epoch"):
            return normalize(cfg, *args, **kwargs)
        with key_hidden(cfg, "evals_per_epoch"):
            return normalize(cfg, *args, **kwargs)

    patch_item(module, name, normalize_config, rebind_copies=True)


def apply_builder() -> None:
    """The trainer builder's part, applied when ``axolotl.core.builders.base`` is imported."""
    owner, name, configure = require(*STRATEGY_TARGET)

    @wraps(configure)
    def _configure_save_and_eval_strategy(self: Any, training_args_kwargs: dict, *args: Any, **kwargs: Any) -> Any:
        result = configure(self, training_args_kwargs, *args, **kwargs)
        if self.cfg.evals_per_epoch and training_args_kwargs.get("eval_strategy") != "no":
            training_args_kwargs["eval_strategy"] = "steps"
            training_args_kwargs["eval_steps"] = NEVER
            on_start = self.cfg.get("eval_on_start")
            training_args_kwargs["eval_on_start"] = True if on_start is None else bool(on_start)
        return result

    patch_item(owner, name, _configure_save_and_eval_strategy)

    owner, name, get_callbacks = require(*CALLBACKS_TARGET)

    @wraps(get_callbacks)
    def get_callbacks_with_evals(self: Any, *args: Any, **kwargs: Any) -> Any:
        callbacks = get_callbacks(self, *args, **kwargs)
        if self.cfg.evals_per_epoch and self.eval_dataset is not None:
            callbacks.append(EvalsPerEpochCallback(self.cfg.evals_per_epoch))
        if self.eval_dataset is not None:
            callbacks.append(NoEvalOnResumeCallback())
        return callbacks

    patch_item(owner, name, get_callbacks_with_evals)
