"""The Axolotl test environments and sources the noxfile's sessions use: uv-built venvs, pins, sdists.

A plain module (standard library + nox), imported by noxfile.py from ci/. The tables of what
to build (the noxfile's ``AXOLOTL`` and ``OUTSIDE``: Python and torch per release, and
``TEST_DEPS``) stay in the noxfile and are passed in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import nox
from junit_report import junit_outcomes  # noqa: F401 - the sessions' one junit reader (ci/junit_report.py)

ROOT = Path(__file__).parent.parent
# uv builds the Axolotl environments: each release pulls a multi-GB torch, and uv's cache
# hardlinks what releases share (one torch 2.8.0 for 0.13.2 to 0.16.1). Installed on first use.
UV = "uv==0.13.9"
UNBUFFERED = {"PYTHONUNBUFFERED": "1"}  # the harness itself keeps Axolotl offline (tests/fixture.py)
LOCAL_WHEELS = Path("/opt/wheels")  # where this machine keeps its CPU torch; uv does not read pip's config


def _load_targets():
    """axolotl_savefix/_infra/releases.py (standard library only) loaded on its own: nox runs outside the package's env."""
    releases = ROOT / "patches" / "axolotl_savefix" / "_infra" / "releases.py"
    spec = importlib.util.spec_from_file_location("savefix_releases", releases)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TARGETS = _load_targets()  # PROVEN (the releases) and release_tuple


def find_links() -> list[str]:
    return ["--find-links", str(LOCAL_WHEELS)] if LOCAL_WHEELS.is_dir() else []


def interpreter(version: str) -> str:
    """The ``python<version>`` on PATH (3.11, 3.12); RuntimeError saying how to get it where there is none."""
    found = shutil.which(f"python{version}")
    if found is None:
        raise RuntimeError(
            f"python{version} is not on PATH. With pyenv: PYENV_VERSION={version}.x or `pyenv global 3.11.7 3.12.1`."
        )
    return found


def uv(session: nox.Session) -> str:
    """uv: the one on PATH, else a pinned one installed once into .nox/uv-tool."""
    found = shutil.which("uv")
    if found:
        return found
    tool = ROOT / ".nox" / "uv-tool"
    uv = tool / "bin" / "uv"
    if not uv.exists():
        session.run(sys.executable, "-m", "venv", "--clear", str(tool), external=True)
        session.run(str(tool / "bin" / "python"), "-m", "pip", "install", "--quiet", UV, external=True)
    return str(uv)


def tree_bytes(path: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes on disk under ``path``, each hardlinked file counted once (across calls sharing ``seen``)."""
    seen = set() if seen is None else seen
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def axolotl_env(
    session: nox.Session,
    version: str,
    python_version: str,
    torch: list[str],
    test_deps: list[str],
    *,
    variant: str = "",
    built_on_torch: list[str] | None = None,
) -> Path:
    """The shared venv for ``axolotl==version`` (on ``python_version``, with ``torch`` and ``test_deps``)
    with this package installed; its python.

    Built with uv from ci/constraints-axolotl-<version>.txt (every package pinned, so CI
    installs what was tested); rebuilt only when the pins change. Each build appends its
    time and the bytes it added to the uv cache to .nox/env-builds.json.

    ``variant``: a venv of its own, ``.nox/axolotl-<version>-<variant>``, that adds ``built_on_torch``
    (pinned requirements) after Axolotl, built without build isolation against the venv's torch
    (DeepSpeed's sdist imports torch in its setup.py); the shared venv stays as it is.
    """
    venv = ROOT / ".nox" / (f"axolotl-{version}-{variant}" if variant else f"axolotl-{version}")
    bin_dir = venv / "bin"
    constraints = ROOT / "ci" / f"constraints-axolotl-{version}.txt"
    uv_bin = uv(session)
    stamp_text = json.dumps({"python": python_version, "torch": torch, "test": test_deps, "pins": constraints.read_text()})
    if built_on_torch:
        stamp_text += json.dumps({"built_on_torch": built_on_torch})
    stamp = venv / ".savefix-stamp"
    if not (stamp.exists() and stamp.read_text() == stamp_text):
        session.log(f"building the shared Axolotl {version} environment in {venv} with uv (minutes, once)")
        cache = Path(session.run(uv_bin, "cache", "dir", silent=True, external=True).strip())
        cache_before = tree_bytes(cache) if cache.exists() else 0
        start = time.monotonic()
        session.run(
            uv_bin, "venv", "--quiet", "--clear", "--seed", "--python", interpreter(python_version), str(venv), external=True
        )
        session.run(
            uv_bin, "pip", "install", "--quiet", "--python", str(bin_dir / "python"), *find_links(),
            "-c", str(constraints), *torch, f"axolotl=={version}", *test_deps, external=True,
        )  # fmt: skip
        if built_on_torch:
            session.run(
                uv_bin, "pip", "install", "--quiet", "--python", str(bin_dir / "python"), *find_links(),
                "-c", str(constraints), "--no-build-isolation", *built_on_torch,
                env={"DS_BUILD_OPS": "0"}, external=True,  # DeepSpeed: no prebuilt C++ op (the CPU one JIT-compiles)
            )  # fmt: skip
        seconds = time.monotonic() - start
        record = {
            "axolotl": version,
            "seconds": round(seconds, 1),
            "uv_cache_bytes_added": tree_bytes(cache) - cache_before,
            "venv_bytes": tree_bytes(venv),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        log = ROOT / ".nox" / "env-builds.json"
        builds = json.loads(log.read_text()) if log.exists() else []
        log.write_text(json.dumps([*builds, record], indent=2))
        session.log(f"axolotl {version} environment: {seconds:.0f} s, {record['uv_cache_bytes_added'] / 1e9:.2f} GB downloaded")
        stamp.write_text(stamp_text)
    # this package changes between runs: always reinstall it (fast, no dependencies)
    session.run(
        uv_bin, "pip", "install", "--quiet", "--python", str(bin_dir / "python"), "--no-deps", "-e", str(ROOT), external=True
    )
    return bin_dir / "python"


def log_disk(session: nox.Session, versions: list[str]) -> None:
    """Log the bytes in uv's cache and what the environments of ``versions`` add to it (hardlinks counted once)."""
    cache = Path(session.run(uv(session), "cache", "dir", silent=True, external=True).strip())
    seen: set[tuple[int, int]] = set()
    in_cache = tree_bytes(cache, seen)
    in_envs = sum(tree_bytes(ROOT / ".nox" / f"axolotl-{v}", seen) for v in versions)
    session.log(
        f"disk: {in_cache / 1e9:.1f} GB in uv's cache, {in_envs / 1e9:.1f} GB more for the {len(versions)} "
        "environments (their packages are hardlinks into the cache)"
    )


def pin(session: nox.Session, version: str, python_version: str, torch: list[str], test_deps: list[str]) -> None:
    """Write ci/constraints-axolotl-<version>.txt with uv's resolver: every package pinned."""
    uv_bin = uv(session)
    wanted = [f"axolotl=={version}", *torch, *test_deps]
    work = ROOT / ".nox" / "pin"
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{version}.in").write_text("\n".join(wanted) + "\n")
    session.run(
        uv_bin, "pip", "compile", "--quiet", "--python", interpreter(python_version), *find_links(), "--no-annotate", "--no-header",
        str(work / f"{version}.in"), "-o", str(work / f"{version}.txt"), external=True,
    )  # fmt: skip
    # torch==2.13.0+cpu -> torch==2.13.0: the local CPU build where there is one, PyPI's elsewhere
    pins = re.sub(r"^(torch\S*)==([^+\s]+)\+\S+$", r"\1==\2", (work / f"{version}.txt").read_text(), flags=re.M)
    header = (
        f"# constraints for the axolotl=={version} test environment (nox: axolotl_env), from `uv pip compile` "
        f"on {time.strftime('%Y-%m-%d')}\n# of: {' '.join(wanted[1:])} (nox -s pin -- {version})\n"
    )
    (ROOT / "ci" / f"constraints-axolotl-{version}.txt").write_text(header + pins)


def venv_env(python: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a command in the shared venv: its bin first on PATH (axolotl, accelerate, torchrun)."""
    path = str(Path(python).parent) + os.pathsep + os.environ.get("PATH", "")
    return {**UNBUFFERED, "PATH": path, **(extra or {})}


def sdist(session: nox.Session, version: str, work: Path) -> Path:
    """Axolotl's sdist from PyPI, unpacked fresh into ``work``: its src/, tests/ and pyproject.toml.

    Found in PyPI's simple index (PEP 691 JSON) and checked against its sha256 (``pip download``
    would build it in an isolated environment first, installing its build requirements).
    """
    archive = work / f"axolotl-{version}.tar.gz"
    if not archive.exists():
        index = urllib.request.Request(
            "https://pypi.org/simple/axolotl/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(index, timeout=60) as reply:
            (found,) = [f for f in json.load(reply)["files"] if f["filename"] == archive.name]
        session.log(f"downloading {found['url']}")
        with urllib.request.urlopen(found["url"], timeout=300) as reply:
            data = reply.read()
        if hashlib.sha256(data).hexdigest() != found["hashes"]["sha256"]:
            raise RuntimeError(f"{found['url']}: sha256 differs from PyPI's record")
        archive.write_bytes(data)
    tree = work / f"axolotl-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.unpack_archive(archive, work)
    return tree


def examples_source(session: nox.Session, axolotl: str, work: Path) -> tuple[str, Path]:
    """The release whose sdist gives ``axolotl``'s example corpus, and its unpacked tree.

    The sdists of 0.13.2 to 0.16.1 ship no examples/ (0.17.0 is the first that does); their
    corpus is the oldest later proven release's examples, loaded by the installed release.
    """
    later = [v for v in TARGETS.PROVEN if TARGETS.release_tuple(v) >= TARGETS.release_tuple(axolotl)]
    for version in later:
        tree = sdist(session, version, work)
        if any((tree / "examples").rglob("*.y*ml")):
            if version != axolotl:
                session.log(f"axolotl {axolotl}'s sdist has no examples/: its corpus is {version}'s examples")
            return version, tree
    raise RuntimeError(f"no sdist from {axolotl} on ships examples/")


def deepspeed_configs(session: nox.Session) -> Path | None:
    """Axolotl 0.19.0's deepspeed_configs/ (from its sdist: downloaded here, or carried to a machine offline); None offline."""
    configs = ROOT / ".nox" / "examples-work" / "axolotl-0.19.0" / "deepspeed_configs"
    if not configs.is_dir():
        try:
            (ROOT / ".nox" / "examples-work").mkdir(parents=True, exist_ok=True)  # sdist() writes the archive there
            sdist(session, "0.19.0", ROOT / ".nox" / "examples-work")
        except Exception as exc:  # noqa: BLE001 - offline: the DeepSpeed cases then skip, saying why
            session.warn(f"no Axolotl sdist for deepspeed_configs/: {exc}")
    return configs if configs.is_dir() else None
