"""One list of proven Axolotl releases (_targets.PROVEN), and everything that names the range agrees with it.

Nothing here imports Axolotl: the proof itself is `nox -s compat`, whose results are
docs/compat-sweep.json; these tests fail when a release is listed that was not run green,
or when pyproject, the README or docs/compatibility.md say something else.
"""

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest

from axolotl_savefix._infra import targets as _targets

ROOT = Path(__file__).resolve().parents[2]


def _compat_doc():
    spec = importlib.util.spec_from_file_location("compat_doc", ROOT / "ci" / "compat_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_proven_is_sorted_distinct_and_the_range_names_its_ends():
    tuples = [_targets.release_tuple(v) for v in _targets.PROVEN]
    assert tuples == sorted(set(tuples))
    assert _targets.SUPPORTED == f"{_targets.PROVEN[0]} to {_targets.PROVEN[-1]}"


def test_every_proven_release_has_pins_and_a_green_sweep_entry():
    sweep = json.loads((ROOT / "docs" / "compat-sweep.json").read_text())
    for version in _targets.PROVEN:
        assert (ROOT / "ci" / f"constraints-axolotl-{version}.txt").is_file(), version
        entry = sweep.get(version)
        assert entry is not None, f"{version} is in PROVEN but `nox -s compat -p {version}` never wrote a result"
        assert entry["result"] == "pass" and not entry["failed"], (version, entry["failed"])
        stock, patched = entry["runs"]["reported-stock"], entry["runs"]["reported-patched"]
        # the stock case shows the bug on that release, and the fix changes what is saved
        assert stock["saved"] != patched["saved"]
        assert stock["saved"] == stock["expected"]["saved"]
        assert patched["saved"] == patched["expected"]["saved"]
    assert set(sweep) <= set(_targets.PROVEN)


def test_pyproject_extra_spans_the_proven_releases():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["axolotl"]
    low = _targets.PROVEN[0]
    major, minor, _ = _targets.release_tuple(_targets.PROVEN[-1])
    assert extra == [f"axolotl>={low},<{major}.{minor + 1}"]


def test_readme_and_user_guide_name_the_proven_range():
    for doc in ("README.md", "docs/user-guide.md", "docs/compatibility.md"):
        text = (ROOT / doc).read_text()
        assert _targets.SUPPORTED in text, doc
        # a range that ends at the newest proven release is the supported range: it starts at the oldest
        ranges = re.findall(r"(0\.\d+\.\d+) to (0\.\d+\.\d+)", text)
        stale = {(a, b) for a, b in ranges if b == _targets.PROVEN[-1] and a != _targets.PROVEN[0]}
        assert not stale, f"{doc} names another supported range: {stale}"


def test_compatibility_table_is_made_from_the_sweep():
    module = _compat_doc()
    sweep = json.loads(module.SWEEP.read_text())
    assert module.updated(module.DOC.read_text(), sweep) == module.DOC.read_text()
    assert list(sweep) == sorted(sweep, key=_targets.release_tuple)


@pytest.mark.parametrize(
    ("version", "warns"),
    [("0.13.2", False), ("0.16.0", False), ("0.21.0", False), ("0.21.1", True), ("0.22.0.dev0", True),
     ("0.12.2", True), ("0.10.0", True), ("not a version", False)],
)  # fmt: skip
def test_outside_the_proven_range_is_one_warning_naming_it(version, warns):
    message = _targets.outside_proven(version)
    assert (message is not None) == warns
    if warns:
        assert version in message and _targets.SUPPORTED in message


def test_the_upstream_fix_is_found_in_axolotls_source_without_importing_it(tmp_path, monkeypatch):
    """Upstream PR #1 adds SavesPerEpochCallback to axolotl.utils.callbacks: there, the package steps aside."""
    import importlib
    import sys

    from axolotl_savefix._infra import releases

    callbacks = tmp_path / "axolotl" / "utils" / "callbacks"
    callbacks.mkdir(parents=True)
    for folder in (tmp_path / "axolotl", tmp_path / "axolotl" / "utils"):
        (folder / "__init__.py").write_text("")
    (callbacks / "__init__.py").write_text("class GCCallback:\n    pass\n")
    for name in ("axolotl", "axolotl.utils", releases.UPSTREAM_FIX_MODULE):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert releases.upstream_fixed() is False
    upstream = "class GCCallback:\n    pass\n\n\nclass SavesPerEpochCallback(TrainerCallback):\n    pass\n"
    (callbacks / "__init__.py").write_text(upstream)
    assert releases.upstream_fixed() is True
    assert "axolotl" not in sys.modules  # found by reading, not importing
