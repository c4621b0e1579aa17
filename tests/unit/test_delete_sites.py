"""Issue 37: every place the package deletes or moves anything on disk, enumerated, each with its proof.

The package deletes a folder only when it proves the folder is its own garbage (its own save that
never committed: :func:`checkpoints.own_cut`; its own extra save that rotation supersedes: the
preemption record's ``fresh``), and otherwise removes only files of its own (its records, temporary
files). A new call that deletes or moves fails this test until it is added to the table below with
its proof, and every folder delete must call its proof in the same function.
"""

import ast
from pathlib import Path

import axolotl_savefix

PACKAGE = Path(axolotl_savefix.__file__).parent
DELETES = {"rmtree", "unlink", "remove", "rmdir", "removedirs"}
MOVES = {"rename", "replace", "move"}

# (module, function, call) -> what proves the target is the package's own
SITES = {
    ("rules/records", "write_atomically", "replace"): "its own record, renamed into place over its own temporary file",
    ("rules/records", "write_marker", "unlink"): "its own pending-save record, superseded by the marker",
    ("rules/records", "write_pending", "unlink"): "its own commit marker in a folder a new save rewrites",
    ("rules/checkpoints", "quarantine", "rename"): "a rename out of the checkpoint-* names (the auto-resume's set-aside)",
    ("rules/decision", "_write_token", "replace"): "its own token file",
    ("rules/decision", "_remove_token", "unlink"): "its own token file",
    ("cli/__init__", "_run", "unlink"): "its own temporary log file",
    ("seams/full_disk", "save_trained_model", "unlink"): "a weight file the failing final save itself wrote (mtime changed)",
    ("_infra/journal", "begin_save", "unlink"): "its own temporary file",
    ("_infra/journal", "begin_save", "rmdir"): "the empty folder it created itself (rmdir fails on anything else)",
    ("_infra/journal", "on_save", "unlink"): "its own temporary marker file",
    ("_infra/journal", "delete_own", "rename"): "a folder its caller proved its own (DELETE_CALLERS), hidden first",
    ("_infra/journal", "delete_own", "rmtree"): "the same folder, under the hidden name",
    ("_infra/journal", "finish_deletes", "rmtree"): "a .savefix-deleting-* folder: renamed so by delete_own after its proof",
    ("_infra/journal", "rmtree", "rmtree"): "Transformers' rotation's own delete, forwarded (its victim recorded first)",
    ("_infra/journal", "rmtree", "unlink"): "its own rotation record",
    ("_infra/journal", "finish_interrupted_rotation", "unlink"): "its own rotation record",
    ("seams/preemption", "remove_superseded", "unlink"): "its own preemption record",
    # the same names, not file operations
    ("rules/run_match", "decide", "replace"): "str.replace: not a file",
    ("_infra/patching", "undo_all", "remove"): "list.remove: not a file",
}
# every caller of journal.delete_own, and the proof it must call first in the same function
DELETE_CALLERS = {
    ("seams/full_disk", "_remove"): "own_cut",
    ("_infra/journal", "finish_interrupted_rotation"): "missing",
    ("seams/preemption", "remove_superseded"): "_fresh_notice",
    ("seams/incomplete_checkpoints", "_delete_own"): "own_cut",
}


def _sites() -> dict[tuple[str, str, str], int]:
    found: dict[tuple[str, str, str], int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DELETES | MOVES:
                    # the innermost function holding the call names the site
                    owner = _innermost(tree, node) or function
                    key = (_module(path), owner.name, node.func.attr)
                    found[key] = found.get(key, 0) + 1
    return found


def _innermost(tree: ast.AST, call: ast.Call) -> ast.FunctionDef | None:
    best = None
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) and any(n is call for n in ast.walk(function)):
            if best is None or any(n is function for n in ast.walk(best)):
                best = function
    return best


def test_every_delete_and_move_the_package_makes_is_listed_with_its_proof():
    found = set(_sites())
    assert found - set(SITES) == set(), "a new delete or move: add it to SITES with what proves the target is the package's own"
    assert set(SITES) - found == set(), "a listed site is gone: remove it from SITES"


def _module(path: Path) -> str:
    return str(path.relative_to(PACKAGE).with_suffix(""))


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                yield _module(path), function


def _called(function) -> set[str]:
    return {
        n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", None)
        for n in ast.walk(function)
        if isinstance(n, ast.Call)
    }


def test_every_folder_delete_goes_through_delete_own_after_its_proof():
    callers = {(module, function.name) for module, function in _functions() if "delete_own" in _called(function)}
    callers.discard(("_infra/journal", "delete_own"))
    assert callers == set(DELETE_CALLERS)
    for (module, name), proof in DELETE_CALLERS.items():
        function = next(f for m, f in _functions() if m == module and f.name == name)
        assert proof in _called(function), f"{module}.{name} deletes a folder without calling {proof}"
    rmtrees = {(module, function) for module, function, call in SITES if call == "rmtree"}
    assert rmtrees == {("_infra/journal", "delete_own"), ("_infra/journal", "finish_deletes"), ("_infra/journal", "rmtree")}
