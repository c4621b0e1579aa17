"""`nox -s compat`'s named cases: the node ids exist, a junit report becomes outcomes, an outcome becomes a cell.

Pure: no Axolotl, no nox. ci/compat_cases.py and ci/compat_doc.py are loaded from their files.
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    sys.path.insert(0, str(ROOT / "ci"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "ci" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "ci"))


cases = _load("compat_cases")
junit_reader = _load("junit_report")
doc = _load("compat_doc")


def test_every_case_names_existing_module_level_tests_with_their_parameters():
    assert cases.node_ids() and len(cases.node_ids()) == len(set(cases.node_ids()))
    for name, tests in cases.CASES.items():
        assert set(tests) in ({"patched"}, {"patched", "stock"}), name
        for test in tests.values():
            path, _, function = test.partition("::")
            source = (ROOT / path).read_text()
            base, _, param = function.partition("[")
            assert re.search(rf"^def {re.escape(base)}\(", source, re.M), test
            shared = (ROOT / "tests" / "e2e" / "cases.py").read_text()  # the named e2e cases of test_matrix
            for part in param.rstrip("]").split("-") if param else []:  # a parametrize value (or ids= name)
                text = source + shared  # a string value quoted, a number as a literal of the parametrize list
                assert f'"{part}"' in text or (part.isdigit() and re.search(rf"[\[ ,]{part}[\], ]", text)), (test, part)


def test_junit_key_is_pytests_classname_and_name():
    assert cases.junit_key("tests/e2e/test_disk.py::test_a[patched]") == "tests.e2e.test_disk::test_a[patched]"
    with pytest.raises(ValueError, match="compat case 'tests/e2e' is not a test node id"):
        cases.junit_key("tests/e2e")


def test_case_outcomes_from_a_junit_report(tmp_path, monkeypatch):
    monkeypatch.setattr(cases, "CASES", {
        "one": {"patched": "tests/e2e/test_x.py::test_p[a]", "stock": "tests/e2e/test_x.py::test_s"},
        "two": {"patched": "tests/e2e/test_y.py::test_q"},
        "three": {"patched": "tests/e2e/test_y.py::test_absent"},
    })  # fmt: skip
    junit = tmp_path / "report.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.e2e.test_x" name="test_p[a]" time="1.0"/>'
        '<testcase classname="tests.e2e.test_x" name="test_s" time="1.0"><failure message="assert 1 == 2">x</failure></testcase>'
        '<testcase classname="tests.e2e.test_y" name="test_q" time="0.1">'
        '<skipped type="pytest.skip" message="mounting a tmpfs\n needs root">t.py:3: mounting</skipped></testcase>'
        "</testsuite></testsuites>"
    )
    assert cases.case_outcomes(junit_reader.junit_outcomes(junit)) == {
        "one": {"patched": "passed", "stock": "failed"},
        "two": {"patched": "skipped: mounting a tmpfs needs root"},
        "three": {"patched": "not run"},
    }
    assert cases.case_outcomes({})["one"] == {"patched": "not run", "stock": "not run"}  # no report


@pytest.mark.parametrize(
    ("case", "cell"),
    [
        ({"patched": "passed", "stock": "passed"}, "✅ · stock: ✅"),
        ({"patched": "failed"}, "❌"),
        ({"patched": "skipped: needs root | a tmpfs", "stock": "not run"}, "skipped: needs root \\| a tmpfs · stock: not run"),
        (None, "not run in this sweep"),
    ],
)
def test_a_case_cell(case, cell):
    assert doc.case_cell(case) == cell


def test_the_case_table_has_a_column_per_case_and_old_entries_say_not_run():
    entry = {"cases": {name: {"patched": "passed"} for name in cases.CASES}}
    lines = doc.render_cases({"0.1.0": {}, "0.2.0": entry})
    header = lines[lines.index("") + 1]
    assert header == "| Axolotl | " + " | ".join(cases.CASES) + " |"
    assert lines[-2] == "| 0.1.0 | " + " | ".join(["not run in this sweep"] * len(cases.CASES)) + " |"
    assert lines[-1] == "| 0.2.0 | " + " | ".join(["✅"] * len(cases.CASES)) + " |"
