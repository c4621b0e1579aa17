"""``axolotl-savefix plan`` on a mistaken input, as a user runs it: a process of its own.

Each case: exit 2, one line on stderr naming the file, nothing on stdout, no traceback
(``--debug`` shows one). Every case either stops before Axolotl is imported or gives
``--steps-per-epoch``, so none needs Axolotl; the schema refusal is tests/axolotl/test_cli_schema.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PATCHES = Path(__file__).resolve().parents[2] / "patches"
OFFLINE = {"HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled"}
GOOD = "base_model: x\nmicro_batch_size: 1\nnum_epochs: 2\nsaves_per_epoch: 2\n"


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(PATCHES), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **OFFLINE, "PYTHONPATH": path}


def plan(*args: str, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "axolotl_savefix", "plan", *map(str, args)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60, **kwargs)


def assert_one_line_error(proc: subprocess.CompletedProcess, path: Path) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0]
    return lines[0]


def test_missing_file(tmp_path):
    path = tmp_path / "missing.yml"
    line = assert_one_line_error(plan(path), path)
    assert "no such file" in line


def test_parent_is_a_regular_file(tmp_path):
    parent = tmp_path / "notadir"
    parent.write_text("x")
    path = parent / "config.yml"  # NotADirectoryError, whatever the user's permissions (root too)
    line = assert_one_line_error(plan(path), path)
    assert "cannot read it" in line


def test_a_folder_with_no_yaml(tmp_path):
    line = assert_one_line_error(plan(tmp_path), tmp_path)
    assert "folder" in line


def test_yaml_syntax_error_names_its_line_and_column(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("base_model: x\nnum_epochs: 2\ndatasets: [a, b\nmicro_batch_size: 1\n")
    line = assert_one_line_error(plan(path), path)
    import yaml

    with pytest.raises(yaml.MarkedYAMLError) as err:  # where the parser itself stops
        yaml.safe_load(path.read_text())
    mark = err.value.problem_mark
    assert f"line {mark.line + 1}, column {mark.column + 1}" in line
    assert mark.line + 1 == 4  # the flow sequence opened on line 3 runs into line 4's mapping key


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("empty.yml", b"", ["empty"]),
        ("list.yml", b"- base_model: x\n- num_epochs: 2\n", ["a list", "mapping"]),
        ("latin1.yml", "base_model: caf\u00e9\n".encode("latin-1"), ["UTF-8", "byte 15"]),  # the é, the 16th byte
    ],
)
def test_a_file_that_is_not_a_yaml_mapping(tmp_path, name, content, fragments):
    path = tmp_path / name
    path.write_bytes(content)
    line = assert_one_line_error(plan(path), path)
    for fragment in fragments:
        assert fragment in line


def test_closed_stdout(tmp_path):
    path = tmp_path / "ok.yml"
    path.write_text(GOOD)
    read, write = os.pipe()
    os.close(read)  # `plan ... | head -0`: nobody reads the answer
    try:
        cmd = [sys.executable, "-m", "axolotl_savefix", "plan", str(path), "--steps-per-epoch", "10"]
        proc = subprocess.run(cmd, env=_env(), stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "stdout" in proc.stderr


def test_the_good_config_plans(tmp_path):
    """The control: the same command on a sound config prints a plan and exits 0."""
    path = tmp_path / "ok.yml"
    path.write_text(GOOD)
    proc = plan(path, "--steps-per-epoch", "10")
    assert proc.returncode == 0, proc.stderr
    assert str(path) in proc.stdout and proc.stderr == ""


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "missing.yml"
    proc = plan(path, "--debug")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "InputError" in proc.stderr and str(path) in proc.stderr


def test_version_is_one_line_on_stdout():
    proc = subprocess.run(
        [sys.executable, "-m", "axolotl_savefix", "--version"], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr == ""
    line = proc.stdout.strip()
    assert line.startswith("axolotl-savefix ") and len(proc.stdout.splitlines()) == 1
    inner = line[line.index("(") + 1 : -1]  # "axolotl 0.19.0" or "axolotl not installed"
    assert inner.startswith("axolotl ") and "(" not in inner
