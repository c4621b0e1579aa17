"""Which Axolotl releases this package was proven on, and the installed versions. Standard library only.

One list (:data:`PROVEN`): the noxfile's environments, pyproject's ``axolotl`` extra, the README's
range and docs/compatibility.md are checked against it (tests/unit/test_releases.py). The noxfile
loads this file on its own (ci/environments.py): nox runs outside the package's environment.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path

# Every Axolotl release this package was proven on by real runs (`nox -s compat`, results in
# docs/compat-sweep.json). One list: the noxfile's environments, pyproject's `axolotl` extra,
# the README's range and docs/compatibility.md are checked against it (tests/unit/test_releases.py).
PROVEN = ("0.13.2", "0.14.0", "0.15.0", "0.16.1", "0.17.0", "0.18.0", "0.19.0", "0.20.0", "0.21.0")
SUPPORTED = f"{PROVEN[0]} to {PROVEN[-1]}"

# The upstream fix (docs/upstream/series, PR #1) adds this callback to this module. Where it is there, the
# installed Axolotl already saves per epoch exactly and our patches step aside.
UPSTREAM_FIX_MODULE = "axolotl.utils.callbacks"
UPSTREAM_FIX_NAME = "SavesPerEpochCallback"


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
    """True where the installed Axolotl ships the exact per-epoch schedule itself (upstream PR #1's callback).

    Reads the module's source for the class instead of importing it: the import of
    ``axolotl.utils.callbacks`` is about a second and a half at plugin registration.
    """
    loaded = sys.modules.get(UPSTREAM_FIX_MODULE)
    if loaded is not None:
        return hasattr(loaded, UPSTREAM_FIX_NAME)
    try:
        spec = importlib.util.find_spec("axolotl")
    except (ImportError, ValueError):
        return False
    relative = Path(*UPSTREAM_FIX_MODULE.split(".")[1:])
    defined = re.compile(rf"^class {UPSTREAM_FIX_NAME}\b", re.MULTILINE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        for source in (Path(location) / relative / "__init__.py", (Path(location) / relative).with_suffix(".py")):
            try:
                if source.is_file() and defined.search(source.read_text(encoding="utf-8", errors="replace")):
                    return True
            except OSError:
                continue
    return False
