"""Find a patch target in the installed Axolotl, or fail naming the version.

Each patch module names its targets as ``module``, ``attribute path`` and the
parameters it relies on; when a release moves or reshapes one, the user gets
one clear error instead of a silently unpatched run.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Every Axolotl release this package was proven on by real runs (`nox -s compat`, results in
# docs/compat-sweep.json). One list: the noxfile's environments, pyproject's `axolotl` extra,
# the README's range and docs/compatibility.md are checked against it (tests/unit/test_releases.py).
PROVEN = ("0.13.2", "0.14.0", "0.15.0", "0.16.1", "0.17.0", "0.18.0", "0.19.0", "0.20.0", "0.21.0")
SUPPORTED = f"{PROVEN[0]} to {PROVEN[-1]}"

# The upstream fix (docs/upstream/) adds this module. Where it exists, the
# installed Axolotl already saves per epoch exactly and our patches step aside.
UPSTREAM_FIX_MODULE = "axolotl.utils.callbacks.per_epoch"


class PatchTargetError(RuntimeError):
    """The installed Axolotl does not have what a patch replaces."""


def axolotl_version() -> str:
    return package_version("axolotl")


def package_version(distribution: str) -> str:
    """The installed version of ``distribution`` (``"transformers"`` -> ``"5.16.1"``), or ``"(not installed)"``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def savefix_version() -> str:
    try:
        return metadata.version("axolotl-savefix")
    except metadata.PackageNotFoundError:
        return "(source tree)"


def release_tuple(version: str) -> tuple[int, ...] | None:
    """``"0.21.0"`` -> ``(0, 21, 0)``; ``"0.22.0.dev0"`` -> ``(0, 22, 0)``; None when unreadable."""
    parts = []
    for piece in version.split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            return None
        parts.append(int(digits))
        if len(digits) < len(piece):  # "0rc1": the release part ends here
            break
    return tuple(parts) if parts else None


def outside_proven(version: str | None = None) -> str | None:
    """A one-line warning where the installed Axolotl is not one of the :data:`PROVEN` releases
    or between them; None inside the range (or where the version cannot be read)."""
    version = axolotl_version() if version is None else version
    have = release_tuple(version)
    low, high = release_tuple(PROVEN[0]), release_tuple(PROVEN[-1])
    if have is None or low is None or high is None or low <= have <= high:
        return None
    return (
        f"axolotl {version} is outside the releases axolotl-savefix {savefix_version()} was proven on "
        f"({SUPPORTED}); its patch targets were found, so it runs patched. Check the first "
        "run's checkpoints against `axolotl-savefix plan`."
    )


def upstream_fixed() -> bool:
    """True where the installed Axolotl ships the exact per-epoch schedule itself.

    Looks for the module's file without importing anything: ``find_spec`` of a
    submodule imports its parent package (``axolotl.utils.callbacks``, about a
    second and a half of imports) at plugin registration.
    """
    if sys.modules.get(UPSTREAM_FIX_MODULE) is not None:
        return True
    try:
        spec = importlib.util.find_spec("axolotl")
    except (ImportError, ValueError):
        return False
    *_, leaf = UPSTREAM_FIX_MODULE.split(".")
    relative = Path(*UPSTREAM_FIX_MODULE.split(".")[1:-1])
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / relative
        if (folder / f"{leaf}.py").is_file() or (folder / leaf / "__init__.py").is_file():
            return True
    return False


def require(module_name: str, path: str, params: tuple[str, ...] = ()) -> tuple[Any, str, Any]:
    """Return ``(owner, name, object)`` for ``module_name:path`` or raise :class:`PatchTargetError`.

    ``path`` is dotted inside the module (``"TrainerBuilderBase.get_callbacks"``);
    ``params`` are parameter names the target must accept.
    """
    where = f"{module_name}.{path}"
    package = module_name.partition(".")[0]
    # a target in Transformers (or accelerate, torch) moves with that package's release, not Axolotl's
    beside = "" if package == "axolotl" else f" with {package} {package_version(package)}"

    def fail(problem: str) -> PatchTargetError:
        return PatchTargetError(
            f"axolotl-savefix {savefix_version()} cannot patch axolotl {axolotl_version()}{beside}: "
            f"{where} {problem}. axolotl-savefix supports axolotl {SUPPORTED}. "
            "Install a supported axolotl, or remove axolotl_savefix.SaveFixPlugin from "
            "`plugins` (and any axolotl_savefix.apply() call) to train without the fix."
        )

    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise fail(f"cannot be imported ({exc})") from exc
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part, None)
        if owner is None:
            raise fail(f"is missing ({part!r} not found)")
    target = getattr(owner, name, None)
    if not callable(target):
        raise fail("is missing")
    try:
        accepted = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a text signature (torch's C functions)
        if params:
            raise fail("has no signature to check") from None
        accepted = {}  # type: ignore[assignment]
    missing = [p for p in params if p not in accepted]
    if missing:
        raise fail(f"no longer takes {', '.join(missing)} (signature is {inspect.signature(target)})")
    return owner, name, target
