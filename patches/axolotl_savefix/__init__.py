"""axolotl-savefix: the checkpoints you asked for, in Axolotl.

Enable with one YAML line::

    plugins:
      - axolotl_savefix.SaveFixPlugin

or from Python, before the config is loaded::

    import axolotl_savefix
    axolotl_savefix.apply()
    ...
    axolotl_savefix.revert()

The package's shape: :mod:`axolotl_savefix.rules` (pure: no Axolotl, no torch), ``_infra`` (patching,
the table of targets, one wrapper per target, the save protocol), :mod:`axolotl_savefix.seams` (one
module per fix, imported only when :func:`apply` runs) and :mod:`axolotl_savefix.cli`.
"""

from __future__ import annotations

import logging
from typing import Any

from ._infra import hooks
from ._infra.log import log_once
from ._infra.patching import batch, is_patched, undo_all, when_imported
from ._infra.targets import BUILDER_MODULE, PatchTargetError, axolotl_version, outside_proven, upstream_fixed
from .rules.checks import SaveFixConfigError

__version__ = "0.2.0"
__all__ = [
    "DiskFullError",
    "IncompleteCheckpointError",
    "NotSharedOutputDirError",
    "PatchTargetError",
    "ResumeAgreementError",
    "RunMismatchError",
    "SaveFixConfigError",
    "SaveFixPlugin",
    "apply",
    "is_applied",
    "revert",
]

_applied: tuple[str, ...] = ()  # the seams in place, in the table's order


def apply(**options: bool) -> bool:
    """Patch the installed Axolotl. Idempotent; returns True when the patches are in place.

    Each option enables one seam (:data:`axolotl_savefix.seams.SEAMS`), all on by default:
    ``saves_per_epoch``, ``evals_per_epoch``, ``retention`` (``save_total_limit``),
    ``incomplete_checkpoints`` (a run killed mid-save resumes; nothing of yours destroyed),
    ``several_nodes``, ``full_disk``, ``preemption`` (SIGTERM saves and exits 128 + signal),
    ``resume_matches_run`` and ``backports`` (fixes bound to releases). The names of 0.1 are accepted
    too (``save_limit=False``, ``resume=False``: :data:`axolotl_savefix.seams.ALIASES`). Called again
    with other options, it adds the seams not yet in place (the union) and says so in one line; one
    that asks for fewer changes nothing and says so (``revert()`` first to drop a seam).

    Returns False, patching nothing, where the installed Axolotl already has the fix. Raises
    :class:`PatchTargetError`, patching nothing, where a target moved (the message names the
    installed versions); TypeError for an unknown option. The trainer builder's targets are patched
    when Axolotl imports ``axolotl.core.builders.base`` (at once if it already has): a moved builder
    target raises there, and undoes every patch.
    """
    global _applied
    from . import seams

    wanted = seams.chosen(options)
    if is_patched():
        extra = tuple(name for name in wanted if name not in _applied)
        if not extra:
            if set(wanted) != set(_applied):
                log_once(
                    f"apply-fewer:{wanted}",
                    f"axolotl_savefix is applied with {', '.join(_applied)}; apply() asked for fewer seams: nothing "
                    "changed (call axolotl_savefix.revert() first to drop some)",
                    logging.WARNING,
                )
            return True
        _install(extra)
        _applied = tuple(name for name in seams.NAMES if name in _applied or name in extra)
        log_once(f"apply-more:{extra}", f"axolotl_savefix: added {', '.join(extra)} (now {', '.join(_applied)})")
        return True
    if upstream_fixed():
        log_once("upstream", f"axolotl {axolotl_version()} already saves per epoch exactly; axolotl_savefix steps aside.")
        return False
    _install(wanted)
    _applied = wanted
    log_once("applied", f"patched axolotl {axolotl_version()}: {', '.join(wanted) or 'nothing (every seam off)'}")
    untested = outside_proven()
    if untested:
        log_once("outside-proven", untested, logging.WARNING)
    return True


def _install(names: tuple[str, ...]) -> None:
    """Contribute the seams ``names`` and wrap their targets: the config-time ones now, the builder's at its import.

    All or nothing: any failure undoes every patch of this package and raises.
    """
    from . import seams
    from ._infra import journal

    try:
        table = {seam.name: seam for seam in seams.SEAMS}
        if any("journal" in table[name].needs for name in names):
            journal.install()
        for name in names:
            table[name].module().install()
        with batch():  # one scan of Axolotl's globals for all the rebinds
            hooks.wrap_all(builder=False)
        when_imported(BUILDER_MODULE, _install_builder)
    except BaseException:
        revert()
        raise


def _install_builder() -> None:
    try:
        hooks.wrap_all(builder=True)
    except BaseException:
        revert()  # all or nothing
        raise


def revert() -> None:
    """Undo every patch: each attribute gets back the very object it had. Idempotent."""
    global _applied
    from ._infra import collectives

    undo_all()
    hooks.reset()
    collectives.forget()
    _applied = ()


def is_applied() -> bool:
    return is_patched()


def applied() -> tuple[str, ...]:
    """The seams in place (empty when none), in the table's order."""
    return _applied


_LAZY = {
    "SaveFixPlugin": ("plugin", "SaveFixPlugin"),
    "DiskFullError": ("seams.full_disk", "DiskFullError"),
    "IncompleteCheckpointError": ("seams.incomplete_checkpoints", "IncompleteCheckpointError"),
    "NotSharedOutputDirError": ("_infra.collectives", "NotSharedOutputDirError"),
    "ResumeAgreementError": ("_infra.collectives", "ResumeAgreementError"),
    "RunMismatchError": ("rules.run_match", "RunMismatchError"),
}


def __getattr__(name: str) -> Any:
    # Axolotl resolves `plugins: [axolotl_savefix.SaveFixPlugin]` with getattr on this package; the plugin,
    # the seams and their errors are imported only then, which keeps `rules` (and the CLI) light.
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
