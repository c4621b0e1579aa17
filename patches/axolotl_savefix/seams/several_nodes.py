"""Several nodes decide together, and ``save_on_each_node: true`` gives every node a whole checkpoint.

* ``determine_last_checkpoint`` (an auto-resume start, several processes): every rank judges the
  checkpoints on its own disk, the ranks exchange what they found (:func:`_infra.collectives.agree_on_resume`:
  :mod:`rules.decision`, newest first, one walker per node, a few integers per round), and all resume
  from the newest checkpoint every rank can load. A node-local ``output_dir`` without
  ``save_on_each_node`` stops every rank with one error naming the node (:class:`NotSharedOutputDirError`),
  instead of the silent restart from step 0 a per-process decision gave. The decision is what
  ``seams.incomplete_checkpoints`` then judges by (:func:`_infra.collectives.taken`); without this
  seam each process judges its own disk.

* ``validate_config``: carries ``save_on_each_node`` past Axolotl's schema, which lacks it
  (:mod:`rules.keys`), and ``configure_strategy`` passes it on to Transformers' training args;
* ``axolotl_save``: writes the weights on every node's main process, not only on rank 0.

Transformers calls ``_save`` where ``args.should_save`` (each node's local rank 0 under
``save_on_each_node``), but Axolotl's ``AxolotlTrainer._save`` passes
``is_main_process=accelerator.is_main_process`` (rank 0 only) to ``save_pretrained``: the
other nodes' checkpoints get the optimizer, scheduler and ``trainer_state.json`` but no
``model.safetensors`` nor ``config.json``, and Transformers' resume then fails there with
``Can't find a valid checkpoint`` (observed, Axolotl 0.19.0, two nodes). Transformers'
``save_pretrained`` itself writes only on ``torch.distributed`` rank 0
(``should_save_on_this_rank``, Transformers 5), whatever ``is_main_process`` says. During
a save on a node's main process that is not rank 0, ``_save`` sees an accelerator whose
``is_main_process`` is true, and the model's ``should_save_on_this_rank`` (an instance
attribute for that save only) returns what it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._infra import hooks
from .._infra.collectives import NotSharedOutputDirError, agree_on_resume
from ..rules import checkpoints, keys, run_match

NAME = "several_nodes"


class _NodeMainAccelerator:
    """The trainer's accelerator as Axolotl's ``_save`` sees it on a node's main process: ``is_main_process``."""

    is_main_process = True

    def __init__(self, accelerator: Any) -> None:
        self._accelerator = accelerator

    def __getattr__(self, name: str) -> Any:
        return getattr(self._accelerator, name)


def _node_main_saves(is_main_process: bool) -> bool:
    return is_main_process


def _save(save: Any, self: Any, output_dir: Any = None, state_dict: Any = None, *args: Any, **kwargs: Any) -> Any:
    """``AxolotlTrainer._save``'s layer (module docstring)."""
    accelerator = self.accelerator
    if not (getattr(self.args, "save_on_each_node", False) and self.args.should_save and not accelerator.is_main_process):
        return save(self, output_dir, state_dict, *args, **kwargs)
    models = {id(m): m for m in (self.model, accelerator.unwrap_model(self.model)) if hasattr(m, "should_save_on_this_rank")}
    self.accelerator = _NodeMainAccelerator(accelerator)
    for model in models.values():  # an instance attribute, for this save only
        model.should_save_on_this_rank = _node_main_saves
    try:
        return save(self, output_dir, state_dict, *args, **kwargs)
    finally:
        self.accelerator = accelerator
        for model in models.values():
            del model.should_save_on_this_rank


def _strategy(call: Any, builder: Any, training_args_kwargs: dict, *args: Any, **kwargs: Any) -> Any:
    result = call(builder, training_args_kwargs, *args, **kwargs)
    if builder.cfg.get(keys.ON_EACH_NODE) is not None:  # carried past Axolotl's schema by validate_config
        training_args_kwargs[keys.ON_EACH_NODE] = bool(builder.cfg.get(keys.ON_EACH_NODE))
    return result


def _decide_together(determine: Any, cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """``determine_last_checkpoint``'s outer layer: the job's decision first, the same step on every rank after."""
    if not run_match.auto_resumes(cfg, kwargs.get("update", args[0] if args else True)):
        return determine(cfg, *args, **kwargs)
    verdict = agree_on_resume(cfg.output_dir)  # None for one process
    if verdict is not None and verdict.error:
        raise NotSharedOutputDirError(verdict.error)
    result = determine(cfg, *args, **kwargs)
    if verdict is not None and result is not None:
        agreed = str(Path(cfg.output_dir) / f"{checkpoints.PREFIX}{verdict.step}") if verdict.step is not None else None
        if result != agreed:  # never ranks on different steps
            result = cfg["resume_from_checkpoint"] = agreed
    return result


def install() -> None:
    hooks.add(hooks.Layer("determine_last_checkpoint", NAME, 10, _decide_together))
    hooks.carry(keys.ON_EACH_NODE, NAME, 41, keys.save_on_each_node)
    hooks.add(hooks.Layer("configure_strategy", NAME, 21, _strategy))
    hooks.add(hooks.Layer("axolotl_save", NAME, 20, _save))
