"""axolotl-savefix: the checkpoints you asked for, in Axolotl.

Enable with one YAML line::

    plugins:
      - axolotl_savefix.SaveFixPlugin

or from Python, before the config is loaded::

    import axolotl_savefix
    axolotl_savefix.apply()
    ...
    axolotl_savefix.revert()

:mod:`axolotl_savefix.schedule` is pure arithmetic and imports neither Axolotl
nor torch; the patch modules are imported only when :func:`apply` runs.
"""

from __future__ import annotations

import logging
from typing import Any

from ._log import log_once
from ._patching import batch, is_patched, undo_all, when_imported
from ._targets import PatchTargetError, axolotl_version, outside_proven, upstream_fixed
from .checks import SaveFixConfigError

__version__ = "0.1.0"
BUILDER_MODULE = "axolotl.core.builders.base"
__all__ = [
    "PatchTargetError",
    "SaveFixConfigError",
    "SaveFixPlugin",
    "apply",
    "is_applied",
    "revert",
]


def apply(
    *,
    save_steps: bool = True,
    save_decision: bool = True,
    save_limit: bool = True,
    eval_decision: bool = True,
    resume: bool = True,
    disk_full: bool = True,
    preemption: bool = True,
) -> bool:
    """Patch the installed Axolotl. Idempotent; returns True when the patches are in place.

    Each knob enables one patch: ``save_steps`` (no float ratio for
    ``saves_per_epoch``), ``save_decision`` (the callback that saves at the
    epoch fractions), ``save_limit`` (the ``save_total_limit`` default),
    ``eval_decision`` (the same for ``evals_per_epoch``), ``resume`` (a run
    killed mid-save resumes from the newest complete checkpoint), ``disk_full``
    (a save that fills the disk deletes its half-written checkpoint and stops the
    run with the numbers and the fix; a rerun stops before training when the
    next save cannot fit), ``preemption`` (SIGTERM, SIGINT or
    ``savefix_preemption_signal`` saves a resumable checkpoint at the step the run
    is in, on every rank, and exits ``128 + signal number``;
    :mod:`axolotl_savefix.preemption`). ``save_steps``
    needs ``save_decision`` (the callback that then makes the saves). Returns
    False, patching nothing, where the installed Axolotl already has the fix.
    Raises :class:`PatchTargetError`, patching nothing, where a target moved. The
    trainer builder's targets are patched when Axolotl imports
    ``axolotl.core.builders.base`` (at once if it already has): a moved builder
    target raises there, and undoes every patch.
    """
    if save_steps and not save_decision:
        raise ValueError(
            "apply(save_steps=True, save_decision=False) would leave saves_per_epoch runs "
            "saving only at the end: enable save_decision too, or set save_steps=False."
        )
    if is_patched():
        return True
    if upstream_fixed():
        log_once(
            "upstream",
            f"axolotl {axolotl_version()} already saves per epoch exactly; axolotl_savefix steps aside.",
        )
        return False
    from . import disk_full as disk_full_patch
    from . import eval_decision as eval_patch
    from . import preemption as preemption_patch
    from . import resume as resume_patch
    from . import save_decision as decision_patch
    from . import save_limit as limit_patch
    from . import save_steps as steps_patch

    chosen = [
        (save_steps, steps_patch),
        (save_decision, decision_patch),
        (save_limit, limit_patch),
        (eval_decision, eval_patch),
        (resume, resume_patch),
        (disk_full, disk_full_patch),
        (preemption, preemption_patch),
    ]
    enabled = [module for on, module in chosen if on]

    def apply_builder() -> None:
        try:
            with batch():  # one scan of Axolotl's globals for all the rebinds
                for module in enabled:
                    module.apply_builder()
        except BaseException:
            undo_all()  # all or nothing
            raise

    try:
        with batch():  # one scan of Axolotl's globals for all the rebinds
            for module in enabled:
                module.apply()
        # the trainer builder's targets: now if Axolotl imported it already, else when it does
        when_imported(BUILDER_MODULE, apply_builder)
    except BaseException:
        undo_all()  # all or nothing
        raise
    names = ", ".join(m.__name__.rsplit(".", 1)[1] for m in enabled)
    log_once("applied", f"patched axolotl {axolotl_version()}: {names}")
    untested = outside_proven()
    if untested:
        log_once("outside-proven", untested, logging.WARNING)
    return True


def revert() -> None:
    """Undo every patch: each attribute gets back the very object it had. Idempotent."""
    undo_all()


def is_applied() -> bool:
    return is_patched()


def __getattr__(name: str) -> Any:
    # Axolotl resolves `plugins: [axolotl_savefix.SaveFixPlugin]` with getattr on this
    # package; importing the plugin (and Axolotl) only then keeps `schedule` light.
    if name == "SaveFixPlugin":
        from .plugin import SaveFixPlugin

        return SaveFixPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
