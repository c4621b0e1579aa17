"""The table of seams: one module per fix, named for what the user gets.

Each seam module has ``NAME`` and ``install()``, which contributes layers, callbacks, carried keys and
rotation contributions to ``_infra.hooks`` (nothing is patched until the hooks wrap their targets).
Seams never import each other (tests/unit/test_layers.py); what several share is in ``_infra`` or
``rules``. :func:`axolotl_savefix.apply` iterates :data:`SEAMS`; its keyword options are the names.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Seam:
    """``name``: the ``apply()`` option; ``gives``: what the user gets (README's "What changes"); ``needs``:
    the infrastructure it installs first (``journal``: the save protocol); ``upstream``: the upstream PR
    of docs/upstream/PR.md it corresponds to, or why it stays in the plugin."""

    name: str
    gives: str
    needs: tuple[str, ...]
    upstream: str

    def module(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.name}")


SEAMS: tuple[Seam, ...] = (
    Seam("saves_per_epoch", "saves at the exact epoch fractions, every epoch end included", (), "PR 1"),
    Seam("evals_per_epoch", "evaluations at the exact epoch fractions; the best model from fresh metrics", (), "PR 3"),
    Seam("retention", "save_total_limit: 0 keeps all, unset keeps what the disk holds", ("journal",),
         "PR 2 (0 keeps all, a warning); the disk rule stays in the plugin"),
    Seam("incomplete_checkpoints", "a run killed mid-save resumes by itself; nothing of yours is destroyed", ("journal",),
         "PR 4 (auto-resume skips a cut save; slim)"),
    Seam("several_nodes", "every rank resumes from the same checkpoint; save_on_each_node works", ("journal",),
         "stays in the plugin (a cross-node protocol)"),
    Seam("full_disk", "a full disk stops the run with one line and never loops", ("journal",), "stays in the plugin"),
    Seam("preemption", "a notice (SIGTERM) saves where the run is and exits 128 + signal", ("journal",),
         "PR 5 (opt-in, in dynamic_checkpoint)"),
    Seam("resume_matches_run", "a resume matches the run; no step evaluated twice", ("journal",),
         "PRs 6 and 7 (eval_on_start on resume; past-the-end as a warning)"),
    Seam("backports", "fixes bound to releases (epoch order, token counters, a moved output_dir)", (), "plugin only"),
)  # fmt: skip
NAMES = tuple(seam.name for seam in SEAMS)

# The options apply() took before the seams had these names (0.1 and earlier): each switches the seams it did.
ALIASES: Mapping[str, tuple[str, ...]] = {
    "save_steps": ("saves_per_epoch",),
    "save_decision": ("saves_per_epoch",),
    "save_limit": ("retention",),
    "eval_decision": ("evals_per_epoch",),
    "resume": ("incomplete_checkpoints", "several_nodes", "resume_matches_run", "backports"),
    "disk_full": ("full_disk",),
}


def chosen(options: Mapping[str, bool]) -> tuple[str, ...]:
    """The seams ``apply(**options)`` enables, in :data:`SEAMS` order.

    Raises TypeError for an unknown option and ValueError where two options disagree on one seam.
    """
    wanted: dict[str, bool] = {}
    said: dict[str, str] = {}
    for option, on in options.items():
        names = (option,) if option in NAMES else ALIASES.get(option)
        if names is None:
            raise TypeError(f"apply() got an unknown option {option!r}: the options are {', '.join(NAMES)}")
        for name in names:
            if name in wanted and wanted[name] != bool(on):
                raise ValueError(
                    f"apply({said[name]}={wanted[name]}, {option}={bool(on)}) disagree on the seam {name}: "
                    f"set {name}={bool(on)} or {name}={wanted[name]} instead"
                )
            wanted[name], said[name] = bool(on), option
    return tuple(name for name in NAMES if wanted.get(name, True))
