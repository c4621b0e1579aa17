"""The README's claims that can be counted agree with the repository: they fail when either drifts.

What is counted: the patches of the upstream series (``docs/upstream/series/*.diff``), the
releases in ``docs/compatibility.md``'s table (and ``_targets.PROVEN``), and the nox sessions
the README names (each must be a session of ``noxfile.py``). No Axolotl, no network.
"""

import ast
import re
from pathlib import Path

import pytest

from axolotl_savefix._infra import targets as _targets

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
           "ten": 10, "eleven": 11, "twelve": 12}  # fmt: skip
COUNT = r"(\d+|" + "|".join(NUMBERS) + r")"


def _number(word: str) -> int:
    return int(word) if word.isdigit() else NUMBERS[word.lower()]


def _sessions() -> set[str]:
    """The names ``noxfile.py`` declares with ``@nox.session`` (a ``name=`` keyword wins over the function's name)."""
    names = set()
    for node in ast.walk(ast.parse((ROOT / "noxfile.py").read_text())):
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            call = deco if isinstance(deco, ast.Call) else None
            target = call.func if call else deco
            if isinstance(target, ast.Attribute) and target.attr == "session":
                named = [k.value.value for k in (call.keywords if call else []) if k.arg == "name"]
                names.add(named[0] if named else node.name)
    return names


def _series() -> list[Path]:
    return sorted((ROOT / "docs" / "upstream" / "series").glob("*.diff"))


def _table_releases() -> list[str]:
    """The first column of docs/compatibility.md's release table (rows that start with a release number)."""
    text = (ROOT / "docs" / "compatibility.md").read_text()
    return re.findall(r"^\| (0\.\d+\.\d+) \| \d+\.\d+", text, flags=re.M)


def test_the_series_count_the_readme_says_is_the_series():
    claims = re.findall(COUNT + r" pull requests", README, flags=re.I)
    claims += re.findall(r"upstream series \(" + COUNT + r" patches\)", README, flags=re.I)
    assert claims, "the README no longer says how many patches the upstream series has: update this test"
    n = len(_series())
    assert n >= 1
    assert {_number(c) for c in claims} == {n}, f"README says {claims}; docs/upstream/series/ has {n} patches"


def test_pr_md_and_design_count_the_series_the_same():
    n = len(_series())
    for doc in ("docs/upstream/PR.md", "docs/design.md"):
        text = (ROOT / doc).read_text()
        claims = re.findall(COUNT + r" (?:pull requests|patches)", text, flags=re.I)
        assert all(_number(c) == n for c in claims), (doc, claims, n)


def test_the_release_count_the_readme_says_is_the_table():
    releases = _table_releases()
    assert releases == list(_targets.PROVEN), (releases, _targets.PROVEN)
    claims = re.findall(r"each of the " + COUNT + r" releases", README, flags=re.I)
    claims += re.findall(re.escape(_targets.SUPPORTED) + r", " + COUNT + r"\)", README)
    assert claims, "the README no longer counts the releases: update this test"
    assert {_number(c) for c in claims} == {len(releases)}, (claims, releases)


def _named_sessions() -> set[str]:
    named = set()
    for command in re.findall(r"nox -s ((?:[\w\"'=().-]+ ?)+)", README):
        for word in command.split():
            if word.startswith("-"):
                break
            named.add(re.split(r"[(\"']", word.strip("\"'"))[0] or word)
    other = README.split("Other sessions:", 1)[1].split("\n#", 1)[0]
    named |= set(re.findall(r"^- `(\w+)`[:(. ]", other, flags=re.M))  # the "Other sessions" list: its bullets,
    named |= set(re.findall(r"\band `(\w+)`(?: \(|\.$)", other, flags=re.M))  # "and `e2e_gpu` (the same on", "and `bench_plan`."
    named |= set(re.findall(r"`(\w+)` builds the environments", other))
    return {n for n in named if n}


def test_every_session_the_readme_names_is_in_the_noxfile():
    named, sessions = _named_sessions(), _sessions()
    assert {"tests", "disk", "compat", "deepspeed", "lint", "e2e_gpu", "envs"} <= named  # the parser finds them
    assert named <= sessions, f"README names sessions noxfile.py lacks: {sorted(named - sessions)}"


@pytest.mark.parametrize(
    ("session", "denial"),
    [("deepspeed", r"DeepSpeed[^.]*(has not|never|not yet) run[^.]*CPU")],
)
def test_the_readme_does_not_deny_what_a_session_runs(session, denial):
    assert session in _sessions()
    assert not re.search(denial, README), f"the README says {denial!r}, but `nox -s {session}` runs it"


def test_the_upstream_resume_sets_aside_only_what_the_package_judges_incomplete(tmp_path):
    """0004's rule (no readable trainer_state.json: a cut save) never sets aside a checkpoint the package judges complete."""
    from axolotl_savefix.rules import checkpoints

    diff = next((ROOT / "docs/upstream/series").glob("0004-*.diff")).read_text()
    added = "\n".join(line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
    source = re.search(r"^def _save_was_cut\(.*?(?=^\S)", added + "\n_", re.M | re.S)
    assert source, "0004: no _save_was_cut found"
    namespace: dict = {}
    exec("import json\nfrom pathlib import Path\n" + source.group(0), namespace)  # noqa: S102 - our own diff
    cut = namespace["_save_was_cut"]
    states = {"complete": '{"global_step": 10}', "missing": None, "empty": "", "cut": '{"global_st'}
    for name, state in states.items():
        folder = tmp_path / name / "checkpoint-10"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}      ")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
        assert cut(folder) == (name != "complete"), name
        if cut(folder):
            assert checkpoints.missing(folder), name
