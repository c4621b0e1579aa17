"""Issue 37, item 4: the conformance corpus of real checkpoint layouts (tests/e2e/layouts.py builds them).

Each layout is written once per session by a real, tiny patched Axolotl run (three saves: steps 2, 4
and 6 from tests/reference.py) and then judged on copies:

(a) every checkpoint folder as written is complete (``checkpoints.judge``; for several processes also
    the job's resume decision, ``decision.lockstep`` over every rank); a real auto-resume from a copy of
    the output_dir holding the checkpoints up to step 4 resumes there (Axolotl's "resume from checkpoint
    at .../checkpoint-4", first trained step 5), and stock does the same with the plugin line removed, or
    fails as recorded in :data:`STOCK_FAILS` (the defect asserted as stock has it);
(b) a save cut at each file of its save order (the files' mtimes) is incomplete, but the one where only
    the commit marker is missing; each file of a committed folder deleted or truncated alone is caught;
    the auto-resume scan (Axolotl's ``determine_last_checkpoint``, patched, in this process) over a
    complete checkpoint and cuts deletes only the package's own cut saves beyond issue 19's bound,
    touches nothing older than the checkpoint it resumes from, and only renames a cut without a fresh
    pending record;
(c) ``python -m axolotl_savefix checkpoints OUTPUT_DIR --json`` shows each layout's verdict, and what the
    next auto-resume would do is what the scan then does.

``nox -s layouts`` runs it (DeepSpeed's layouts in the DeepSpeed environment); with
``SAVEFIX_LAYOUTS_REPORT`` set, the table of the issue's closing note is written there (Markdown).
``SAVEFIX_LAYOUTS_REUSE=DIR`` takes the layouts an earlier session built under ``DIR`` (its pytest
``layouts0`` folder) instead of building them again: for developing these tests; the resumes still run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

import layouts
import pytest

from axolotl_savefix.rules import checkpoints, decision

pytestmark = [pytest.mark.e2e, pytest.mark.layouts]

# Layouts stock Axolotl itself cannot write on this machine: the run dies at its first save, stock and patched alike
# (../shared/ENGINES.md: FSDP2's FULL_STATE_DICT on the CPU). Their test asserts that crash and judges what it left.
CANNOT_WRITE = {"fsdp2_full": "RuntimeError: Attempted to access the data pointer on an invalid python storage."}
# Where stock Axolotl fails to resume from a checkpoint of the layout (the line its failure logs): asserted as stock has it.
STOCK_FAILS: dict[str, str] = {}


def _param(spec: layouts.Spec):
    return pytest.param(spec.name, marks=[pytest.mark.deepspeed] if spec.deepspeed else [], id=spec.name)


WRITTEN = [_param(s) for s in layouts.SPECS if s.name not in CANNOT_WRITE]
SEVERAL = [_param(s) for s in layouts.SPECS if s.name not in CANNOT_WRITE and s.world > 1]


def _require(spec: layouts.Spec) -> None:
    if spec.deepspeed:
        if importlib.util.find_spec("deepspeed") is None:
            pytest.skip("needs the deepspeed package (nox -s layouts runs these in .nox/axolotl-0.19.0-deepspeed)")
        if layouts.deepspeed_configs() is None:
            pytest.skip("needs SAVEFIX_DEEPSPEED_CONFIGS: Axolotl's deepspeed_configs/ (nox -s layouts sets it)")
    if layouts.python_for(spec) is None:
        pytest.skip(f"needs Axolotl {spec.release}'s environment: SAVEFIX_LAYOUTS_PYTHON_{spec.release.replace('.', '_')}")


class Corpus:
    """Each layout built once per session (module), lazily; what the tests found, for the report."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, layouts.Built] = {}
        self.rows: dict[str, dict] = defaultdict(dict)
        self.seconds: dict[str, float] = defaultdict(float)

    def get(self, name: str) -> layouts.Built:
        spec = layouts.BY_NAME[name]
        _require(spec)
        if name not in self.built:
            reuse = os.environ.get("SAVEFIX_LAYOUTS_REUSE")  # a folder an earlier session built under (developing the tests)
            earlier = layouts.load(spec, Path(reuse)) if reuse else None
            started = time.monotonic()
            self.built[name] = earlier or layouts.build(spec, self.root)
            self.seconds[name] += time.monotonic() - started
        return self.built[name]

    def resume(self, built: layouts.Built, step: int, **kwargs) -> layouts.Resumed:
        started = time.monotonic()
        try:
            return layouts.resume(built, self.root, step, **kwargs)
        finally:
            self.seconds[built.spec.name] += time.monotonic() - started

    def report(self) -> str:
        columns = ["layout", "files in a checkpoint", "verdict as written", "cuts judged incomplete", "resumed step patched"]
        columns += ["stock resume", "session time"]
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        for spec in layouts.SPECS:
            row = self.rows.get(spec.name)
            if not row:
                continue
            cells = [row.get(key, "") for key in ("files", "verdict", "cuts", "patched", "stock")]
            lines.append(f"| {spec.name} ({spec.note}) | " + " | ".join(cells) + f" | {self.seconds[spec.name]:.0f} s |")
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    built = Corpus(tmp_path_factory.mktemp("layouts"))
    yield built
    path = os.environ.get("SAVEFIX_LAYOUTS_REPORT")
    if path and built.rows:
        with open(path, "a") as out:
            out.write(built.report())


def _tail(text: str) -> str:
    return text[-4000:]


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) -> sha256: what 'touched' is measured against."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _tree(out: Path) -> dict[str, dict[str, str]]:
    return {p.name: _digest(p) for p in sorted(out.iterdir()) if p.is_dir()}


def _job_decision(out: Path, world: int) -> decision.Verdict:
    """The resume decision every rank of a ``world``-process job on one shared ``output_dir`` takes (rank 0's)."""
    ranks = [decision.Rank(rank, world, out, walker=rank == 0, node=0) for rank in range(world)]
    verdicts, _ = decision.lockstep(ranks)
    assert len({(v.step, v.error) for v in verdicts}) == 1, verdicts
    return verdicts[0]


def _saves(built: layouts.Built) -> list[int]:
    return layouts.expected_saves(built.spec)


# --- (a) as written ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WRITTEN)
def test_every_checkpoint_as_written_is_judged_complete(name, corpus):
    built = corpus.get(name)
    assert built.code == 0, _tail(built.log)
    expected = _saves(built)
    restarts = layouts.restart_steps(built.spec)
    assert built.saved == expected
    folders = sorted(int(p.name.split("-")[1]) for p in built.output_dir.glob("checkpoint-*"))
    assert folders == sorted(expected + restarts)
    verdicts = {}
    for step in expected:
        folder = built.folder(step)
        judged = checkpoints.judge(folder)
        verdicts[step] = judged
        assert judged.complete, f"{folder.name} as written is judged incomplete: {judged.lacks}"
        assert judged.marked and (folder / checkpoints.MARKER).is_file()  # the patched save committed
        assert not (folder / checkpoints.PENDING).exists()  # and removed its pending-save record
        assert not judged.notes
    for step in restarts:  # ReLoRA's restart folder: no save wrote it (no trainer_state.json); stock cannot resume from it either
        judged = checkpoints.judge(built.folder(step))
        assert not judged.complete and not checkpoints.own_cut(built.folder(step))
    if built.spec.world > 1:  # the job's decision: every rank can load the newest
        assert _job_decision(built.output_dir, built.spec.world).step == expected[-1]
    first = built.orders[expected[0]]
    optimizer = {True: "optimizer written", False: "no optimizer (recorded)", None: "optimizer unknown"}[
        verdicts[expected[-1]].optimizer
    ]
    corpus.rows[name]["files"] = f"{len(first)}: " + ", ".join(first)
    corpus.rows[name]["verdict"] = f"complete ({len(expected)}/{len(expected)}; {optimizer})" + (
        f"; restart folder checkpoint-{restarts[0]}: incomplete" if restarts else ""
    )


@pytest.mark.parametrize("name", WRITTEN)
def test_the_cli_shows_each_verdict(name, corpus):
    built = corpus.get(name)
    assert built.code == 0, _tail(built.log)
    expected = _saves(built)
    report = layouts.checkpoint_json(built.output_dir)
    shown = {f["name"]: f for f in report["folders"]}
    for step in expected:
        row = shown[f"checkpoint-{step}"]
        assert row["complete"] and row["lacks"] == [], row
        assert row["own_cut"] is False
    for step in layouts.restart_steps(built.spec):
        row = shown[f"checkpoint-{step}"]
        assert not row["complete"] and row["older"] and not row["own_cut"], row
    assert report["resume_from"] == f"checkpoint-{expected[-1]}"
    assert report["newest_incomplete"] is False
    assert report["next_resume"] == {"set_aside": [], "delete": [], "kept": []}


def _resume_step(built: layouts.Built) -> int:
    return _saves(built)[-2]  # a run killed after its second save: the last save still ahead


def _assert_resumed(resumed: layouts.Resumed, built: layouts.Built, step: int, before: dict) -> None:
    assert resumed.code == 0, _tail(resumed.log)
    assert resumed.resumed_from == step, _tail(resumed.log)
    assert resumed.first_step == step + 1
    assert layouts.saves(resumed.output_dir) == [s for s in _saves(built) if s > step]
    assert {name: tree for name, tree in _tree(resumed.output_dir).items() if name in before} == before  # nothing touched


@pytest.mark.parametrize("name", WRITTEN)
def test_a_patched_auto_resume_starts_at_the_checkpoints_step(name, corpus):
    built = corpus.get(name)
    assert built.code == 0, _tail(built.log)
    step = _resume_step(built)
    before = {p.name: _digest(p) for p in built.output_dir.glob("checkpoint-*") if int(p.name.split("-")[1]) <= step}
    if built.spec.keys.get("save_only_model"):
        # issue 22: a model-only checkpoint is not auto-resumed silently (a fresh optimizer, the schedule lost); the
        # run stops before its first step naming the fix, and resumes with savefix_resume_anyway: true
        refused = corpus.resume(built, step, plugin=True)
        assert refused.code != 0 and "RunMismatchError" in refused.log, _tail(refused.log)
        assert "saved with save_only_model" in refused.log and refused.first_step is None
        assert {n: tree for n, tree in _tree(refused.output_dir).items() if n in before} == before
        resumed = corpus.resume(built, step, plugin=True, extra={"savefix_resume_anyway": True}, name="patched-anyway")
        _assert_resumed(resumed, built, step, before)
        corpus.rows[name]["patched"] = f"refused (issue 22); with savefix_resume_anyway: {resumed.first_step}"
        return
    resumed = corpus.resume(built, step, plugin=True)
    _assert_resumed(resumed, built, step, before)
    assert "is incomplete" not in resumed.log and not list(resumed.output_dir.glob("incomplete-*"))
    corpus.rows[name]["patched"] = f"from {resumed.resumed_from}, first step {resumed.first_step}"


@pytest.mark.parametrize("name", WRITTEN)
def test_stock_auto_resume_beside(name, corpus):
    """The same resume with the plugin line removed: it resumes, or fails as recorded (the defect, as stock has it)."""
    built = corpus.get(name)
    assert built.code == 0, _tail(built.log)
    step = _resume_step(built)
    resumed = corpus.resume(built, step, plugin=False)
    if name in STOCK_FAILS:
        assert resumed.code != 0 and STOCK_FAILS[name] in resumed.log, _tail(resumed.log)
        corpus.rows[name]["stock"] = f"fails: {STOCK_FAILS[name]}"
        return
    assert resumed.code == 0, _tail(resumed.log)
    assert resumed.resumed_from == step and resumed.first_step == step + 1
    for later in (s for s in _saves(built) if s > step):  # what stock itself wrote after the resume: complete, no marker
        judged = checkpoints.judge(resumed.output_dir / f"checkpoint-{later}")
        assert judged.complete and not judged.marked, f"stock's checkpoint-{later}: {judged.lacks}"
    corpus.rows[name]["stock"] = f"from {resumed.resumed_from}, first step {resumed.first_step}"


def test_relora_a_restart_folder_newest_is_set_aside_and_the_run_resumes_from_the_save_before(corpus):
    """Killed after ReLoRA's restart at step 3 wrote ``checkpoint-3/adapter``, before the save at 4: no save wrote that folder.

    Patched: renamed aside (never deleted: no pending record), resumed from checkpoint-2. Stock picks checkpoint-3 and fails.
    """
    built = corpus.get("relora")
    assert built.code == 0, _tail(built.log)
    restart = layouts.restart_steps(built.spec)[0]
    before = _digest(built.folder(restart))
    resumed = corpus.resume(built, restart, plugin=True, name="patched-restart-newest")
    assert resumed.code == 0, _tail(resumed.log)
    resumed_from = max(s for s in _saves(built) if s < restart)
    assert resumed.resumed_from == resumed_from and resumed.first_step == resumed_from + 1
    assert _digest(resumed.output_dir / f"incomplete-checkpoint-{restart}") == before  # renamed, nothing removed
    stock = corpus.resume(built, restart, plugin=False, name="stock-restart-newest")
    assert stock.resumed_from == restart and stock.code != 0, _tail(stock.log)
    missing = stock.output_dir / f"checkpoint-{restart}" / "trainer_state.json"
    assert f"FileNotFoundError: [Errno 2] No such file or directory: '{missing}'" in stock.log  # Transformers' load
    corpus.rows["relora"]["stock"] = corpus.rows["relora"].get("stock", "") + (
        f"; restart folder newest: patched from {resumed_from}, stock fails on checkpoint-{restart}"
    )


# --- (b) cuts --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WRITTEN)
def test_a_save_cut_at_any_file_of_its_save_order_is_judged_incomplete(name, corpus, tmp_path):
    """Files before k whole, file k half (or missing), files after k absent, no marker, the fresh pending record.

    Only the cut with every file there and the marker alone missing is complete (everything the save wrote is there),
    and, the rule's one documented limit, a cut whose absent files are all in a subfolder another writer fills after
    ``trainer_state.json`` (ReLoRA's ``relora/``): without the marker nothing names them. A half-written one there is
    caught. With several processes, the job's decision (every rank, lockstep) must agree: the cut is never resumed from.
    """
    built = corpus.get(name)
    assert built.code == 0, _tail(built.log)
    wrong, total = [], 0
    for step in _saves(built):
        order = built.orders[step]
        for k in range(len(order) + 1):
            for how in ("half", "missing") if k < len(order) else ("none",):
                out = tmp_path / f"{step}-{k}-{how}"
                folder = layouts.cut(built.folder(step), out / f"checkpoint-{step}", order, k, how)
                total += 1
                judged = checkpoints.judge(folder)
                whole = k == len(order) or (how == "missing" and _late_subfolder_files(order, k))
                where = f"checkpoint-{step} cut at {k} ({order[k] if k < len(order) else 'only the marker missing'}, {how})"
                if judged.complete != whole:
                    wrong.append(f"{where}: judged {'complete' if judged.complete else 'incomplete: ' + '; '.join(judged.lacks)}")
                if not whole and not checkpoints.own_cut(folder):
                    wrong.append(f"{where}: not provably the package's own cut save (it carries a fresh pending record)")
                if built.spec.world > 1:
                    verdict = _job_decision(out, built.spec.world)
                    if verdict.step != (step if whole else None):
                        wrong.append(f"{where}: the {built.spec.world}-rank decision resumes from {verdict.step}")
                shutil.rmtree(out)
    corpus.rows[name]["cuts"] = f"{total - len(wrong)}/{total}"
    assert not wrong, f"{name}: {len(wrong)} of {total} cuts misjudged:\n" + "\n".join(wrong)


def _late_subfolder_files(order: list[str], k: int) -> bool:
    """Whether every file from ``k`` on is in a subfolder (not a sharded save's) written after ``trainer_state.json``."""
    if "trainer_state.json" not in order[:k]:
        return False
    return all("/" in name and not name.startswith(checkpoints.SHARDED) for name in order[k:])


@pytest.mark.parametrize("name", WRITTEN)
def test_each_file_of_a_committed_checkpoint_deleted_or_truncated_alone_is_caught(name, corpus, tmp_path):
    built = corpus.get(name)
    assert built.code == 0, _tail(built.log)
    wrong, total = [], 0
    for step in _saves(built):
        source = built.folder(step)
        for rel in built.orders[step]:
            for how in ("half", "missing"):
                if how == "half" and (source / rel).stat().st_size < 2:
                    continue  # nothing to cut
                folder = layouts.damaged(source, tmp_path / "x" / f"checkpoint-{step}", rel, how)
                total += 1
                judged = checkpoints.judge(folder)
                if judged.complete:
                    wrong.append(f"checkpoint-{step}/{rel} {'truncated to half' if how == 'half' else 'deleted'}: judged complete")
                shutil.rmtree(tmp_path / "x")
    corpus.rows[name]["cuts"] = corpus.rows[name].get("cuts", "?") + f"; damaged alone {total - len(wrong)}/{total}"
    assert not wrong, f"{name}: {len(wrong)} of {total} damaged copies judged complete:\n" + "\n".join(wrong)


def _determine_last_checkpoint(out: Path) -> str | None:
    """Axolotl's own ``determine_last_checkpoint``, patched, on an auto-resume (this process: one rank)."""
    import axolotl_savefix

    axolotl_savefix.apply()
    try:
        from axolotl.utils.dict import DictDefault
        from axolotl.utils.train import determine_last_checkpoint

        return determine_last_checkpoint(DictDefault(output_dir=str(out), auto_resume_from_checkpoints=True))
    finally:
        axolotl_savefix.revert()


@pytest.mark.parametrize("name", WRITTEN)
def test_the_auto_resume_scan_deletes_nothing_but_its_own_cut_saves(name, corpus, tmp_path):
    """A complete checkpoint-s2 among cuts (s1 < s2 < s3: the run's three saves), three output_dirs.

    A: checkpoint-s1 a cut with a fresh pending record (older than the resume: untouched), checkpoint-s2 complete,
       incomplete-checkpoint-s3 and checkpoint-s3 cuts with fresh pending records (the package's own: issue 19's bound
       keeps the newest, renamed, and deletes the older), incomplete-checkpoint-s1 a cut without one (never deleted).
    B: checkpoint-s3 a cut without a pending record; C: with one that is not fresh. Each is renamed, nothing deleted.
    The CLI's "next auto-resume" is what the scan then does.
    """
    built = corpus.get(name)
    assert built.code == 0, _tail(built.log)
    s1, s2, s3 = _saves(built)
    order = {s: built.orders[s] for s in (s1, s2, s3)}

    a = tmp_path / "a"
    a.mkdir()
    layouts.cut(built.folder(s1), a / f"checkpoint-{s1}", order[s1], len(order[s1]) // 2, "half")
    layouts.copy_checkpoint(built.folder(s2), a / f"checkpoint-{s2}")
    layouts.cut(built.folder(s3), a / f"incomplete-checkpoint-{s3}", order[s3], 0, "half")
    layouts.cut(built.folder(s3), a / f"checkpoint-{s3}", order[s3], len(order[s3]) - 1, "half")
    layouts.cut(built.folder(s1), a / f"incomplete-checkpoint-{s1}", order[s1], 1, "missing", pending=None)
    for restart in layouts.restart_steps(built.spec):  # ReLoRA's restart folder, as the run left it
        layouts.copy_checkpoint(built.folder(restart), a / f"checkpoint-{restart}")
    before = _tree(a)
    shown = layouts.checkpoint_json(a)["next_resume"]
    assert _determine_last_checkpoint(a) == str(a / f"checkpoint-{s2}")
    after = _tree(a)
    older = {n for n in before if n.startswith("checkpoint-") and int(n.split("-")[1]) < s2}
    # own cuts (fresh pending, no marker) beyond the resumed one, oldest first: issue 19 keeps only the newest
    own = [f"incomplete-checkpoint-{s3}", f"checkpoint-{s3}"]
    renamed = [n for n in after if n not in before or n == f"incomplete-checkpoint-{s3}"]
    assert renamed in ([f"incomplete-checkpoint-{s3}"], [f"incomplete-checkpoint-{s3}.1"]), sorted(after)
    expected = {n: before[n] for n in before if n not in own}
    expected[renamed[0]] = before[f"checkpoint-{s3}"]  # the newest own cut: renamed, whole; the older one deleted
    assert after == expected
    assert {n: after[n] for n in older} == {n: before[n] for n in older}  # nothing older than the resume touched
    assert [d["name"] for d in shown["delete"]] == [f"incomplete-checkpoint-{s3}"]
    assert [d["name"] for d in shown["set_aside"]] == [f"checkpoint-{s3}"]
    assert shown["kept"] == [f"incomplete-checkpoint-{s1}"]

    for label, pending in (("b", None), ("c", False)):
        out = tmp_path / label
        out.mkdir()
        layouts.copy_checkpoint(built.folder(s2), out / f"checkpoint-{s2}")
        layouts.cut(built.folder(s3), out / f"checkpoint-{s3}", order[s3], len(order[s3]) // 2, "half", pending=pending)
        before = _tree(out)
        assert _determine_last_checkpoint(out) == str(out / f"checkpoint-{s2}")
        assert _tree(out) == {
            f"checkpoint-{s2}": before[f"checkpoint-{s2}"],
            f"incomplete-checkpoint-{s3}": before[f"checkpoint-{s3}"],
        }


# --- a layout this machine cannot write ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CANNOT_WRITE))
def test_a_layout_that_dies_at_its_first_save_leaves_a_cut_judged_incomplete(name, corpus, tmp_path):
    """FSDP2 with FULL_STATE_DICT on the CPU: the first save dies (stock the same); the folder it left is a cut."""
    built = corpus.get(name)
    first = _saves(built)[0]
    assert built.code != 0 and CANNOT_WRITE[name] in built.log, _tail(built.log)
    assert built.saved == [] and sorted(p.name for p in built.output_dir.glob("checkpoint-*")) == [f"checkpoint-{first}"]
    folder = built.folder(first)
    judged = checkpoints.judge(folder)
    assert not judged.complete and checkpoints.own_cut(folder)  # the save began with its pending record, never committed
    assert checkpoints.read_pending(folder)["fresh"] is True  # a new folder: what layouts.cut writes into every cut
    report = layouts.checkpoint_json(built.output_dir)
    assert report["newest_incomplete"] and report["resume_from"] is None
    stock_dir = tmp_path / "stock"
    stock_dir.mkdir()
    config = layouts.again(built, stock_dir, plugin=False)
    started = time.monotonic()
    code, log = layouts.run(built.spec, config, "stock.log")
    corpus.seconds[name] += time.monotonic() - started
    assert code != 0 and CANNOT_WRITE[name] in log, _tail(log)  # stock dies the same way
    stock_folder = stock_dir / "out" / f"checkpoint-{first}"
    assert not checkpoints.judge(stock_folder).complete and not checkpoints.own_cut(stock_folder)
    corpus.rows[name].update(
        files=", ".join(sorted(layouts.files(folder))) + " (what the crash left)",
        verdict="not writable here: the first save dies (stock too); the cut it leaves: incomplete, own cut",
        cuts="-",
        patched="-",
        stock=f"fails at the first save: {CANNOT_WRITE[name]}",
    )
