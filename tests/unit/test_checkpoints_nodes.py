"""Several nodes: the resume decision every rank takes together (decision.protocol, in lockstep here).

Node disks are built file by file as Transformers writes them: with ``save_on_each_node``
every node's main process writes the main files; without it only rank 0 (node 0) does; every
rank writes its own ``rng_state_R.pth`` to its own node's disk. ``commit``: each node's main
process wrote its commit marker after the save (CommitMarker), or not (stock, earlier versions).
"""

import pytest
from test_checkpoints import make_checkpoint, torch_zip, truncate

from axolotl_savefix.rules import checkpoints, decision

WORLD = 2


def node_disk(root, node, steps, *, main: bool, cut_rng=None, rng_from=None, commit=False, world=WORLD, ranks=None):
    """Node ``node``'s output_dir: each step's main files (when this node's main process writes them) and its ranks' RNG files."""
    disk = root / f"node{node}"
    ranks = [node] if ranks is None else ranks
    for step in steps:
        if main:
            folder = make_checkpoint(disk, step, world=world)
            for r in range(world):
                if r not in ranks:
                    (folder / f"rng_state_{r}.pth").unlink()
        else:
            folder = disk / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            for r in ranks:
                torch_zip(folder / f"rng_state_{r}.pth")
        if rng_from is not None and step >= rng_from:
            (folder / "trainer_state.json").unlink()  # the save was cut before its last file
        if commit and not (rng_from is not None and step >= rng_from) and step != cut_rng:
            checkpoints.write_marker(folder, step, world, False, f"node{node}")  # only a save that finished
        if step == cut_rng:
            for r in ranks:
                truncate(folder / f"rng_state_{r}.pth")
    return disk


def decide(*disks):
    """One rank per node: rank r on disks[r]."""
    ranks = [decision.Rank(r, len(disks), d, walker=True, node=r) for r, d in enumerate(disks)]
    verdicts, _ = decision.lockstep(ranks)
    assert len({(v.step, v.error is None) for v in verdicts}) == 1  # the same on every rank (each names its own output_dir)
    return verdicts


both = pytest.mark.parametrize("commit", [False, True], ids=["full-rule", "marker"])


@both
def test_save_on_each_node_both_nodes_resume_from_the_newest_both_can_load(tmp_path, commit):
    # node 1 was killed while writing its RNG state of checkpoint-12: its trainer_state.json never came
    node0 = node_disk(tmp_path, 0, [4, 8, 12], main=True, commit=commit)
    node1 = node_disk(tmp_path, 1, [4, 8, 12], main=True, cut_rng=12, rng_from=12, commit=commit)
    v0, v1 = decide(node0, node1)
    assert v0.step == 8 and v0.error is None
    assert v0.judge(node0 / "checkpoint-8") == [] and v1.judge(node1 / "checkpoint-8") == []
    assert v1.judge(node1 / "checkpoint-12") == [
        "trainer_state.json (never written: a save cut before its end, or a folder no save wrote)",
        "rng_state_1.pth (cut while being written)",
    ]
    assert v0.judge(node0 / "checkpoint-12") == ["node 1 (rank 1): trainer_state.json (missing, cut, or of another step)"]
    assert sorted(v0.lacks) == [12]  # newest first, lazily: checkpoint-4 was not judged


def test_a_step_one_node_never_started_is_not_resumed(tmp_path):
    node0 = node_disk(tmp_path, 0, [4, 8, 12], main=True, commit=True)
    node1 = node_disk(tmp_path, 1, [4, 8], main=True, commit=True)
    v0, v1 = decide(node0, node1)
    assert v0.step == 8 and v0.error is None
    assert v0.judge(node0 / "checkpoint-12") == ["node 1 (rank 1): the folder (not in its output_dir)"]
    assert v1.lacks[12] == [checkpoints.GONE]


@both
def test_local_disks_main_only_is_the_not_shared_error(tmp_path, commit):
    node0 = node_disk(tmp_path, 0, [4, 8, 12], main=True, commit=commit)
    node1 = node_disk(tmp_path, 1, [4, 8, 12], main=False, cut_rng=12, commit=commit)
    v0, v1 = decide(node0, node1)
    assert v0.step is None and v0.error is not None
    assert v0.error.startswith("output_dir is not shared between the nodes: checkpoint-8 was saved whole")
    lacks = v1.error.split("node 1 (rank 1) lacks ")[1].split(" in ")[0].split(", ")
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= set(lacks)
    assert "rng_state_0.pth" not in lacks and "node 0 (rank 0) lacks" not in v0.error
    assert f"in {node1}/checkpoint-8" in v1.error and "save_on_each_node: true" in v0.error


def test_a_shared_disk_is_the_old_rule_and_one_walker_judges_it(tmp_path):
    shared = make_checkpoint(tmp_path / "shared", 8, world=WORLD).parent
    make_checkpoint(shared, 12, world=WORLD)
    truncate(shared / "checkpoint-12" / "rng_state_1.pth")
    verdicts = decide(shared, shared)
    assert verdicts[0].step == 8 and verdicts[0].error is None
    assert [v.walked for v in verdicts] == [True, False]  # node 1's main process read rank 0's token: stood down
    assert [v.shared for v in verdicts] == [True, True]
    assert not (shared / decision.TOKEN).exists()  # removed once every walker read it
    for folder in checkpoints.checkpoints(shared):
        assert (verdicts[0].judge(folder) == []) == (checkpoints.missing(folder) == [])


def test_no_checkpoint_saved_whole_anywhere_starts_from_the_beginning(tmp_path):
    node0 = node_disk(tmp_path, 0, [4], main=True, rng_from=4)
    node1 = node_disk(tmp_path, 1, [4], main=False, cut_rng=4)
    v0, v1 = decide(node0, node1)
    assert (v0.step, v0.error, v1.error) == (None, None, None) and sorted(v0.lacks) == [4]
    empty = decide(tmp_path / "empty0", tmp_path / "empty1")
    assert [(v.step, v.lacks, v.error) for v in empty] == [(None, {}, None)] * 2
    (tmp_path / "fresh").mkdir()  # a first run: output_dir there, no checkpoint yet
    fresh = decide(tmp_path / "fresh", tmp_path / "fresh")
    assert [(v.step, v.walked) for v in fresh] == [(None, True), (None, False)]
    assert list((tmp_path / "fresh").iterdir()) == []  # rank 0's token removed


def test_a_node_whose_main_process_did_not_write_the_weights_cannot_load(tmp_path):
    # Axolotl 0.19.0's _save writes the weights on rank 0 only, even with save_on_each_node
    node0 = node_disk(tmp_path, 0, [4, 8], main=True)
    node1 = node_disk(tmp_path, 1, [4, 8], main=True)
    for step in (4, 8):
        (node1 / f"checkpoint-{step}" / "model.safetensors").unlink()
    v0, v1 = decide(node0, node1)
    assert v0.step is None
    assert v1.lacks[8] == ["the model weights (never written on this disk)"]
    assert v0.error and f"node 1 (rank 1) lacks model.safetensors in {node1}/checkpoint-8" in v1.error


@pytest.mark.parametrize("layout", ["shared", "local"])
def test_sixteen_ranks_eight_per_node_agree_and_open_little(tmp_path, layout, monkeypatch):
    """Two nodes of 8 ranks: the newest is cut on one node; every rank agrees; non-walkers open nothing."""
    world, per_node = 16, 8
    if layout == "shared":
        disk = tmp_path / "shared"
        for step in (4, 8, 12):
            folder = make_checkpoint(disk, step, world=world)
            if step == 12:
                truncate(folder / "rng_state_11.pth")  # killed while rank 11 wrote it: no marker
            else:
                checkpoints.write_marker(folder, step, world, False, "rank0")
        disks = [disk, disk]
    else:
        disks = [node_disk(tmp_path, n, [4, 8, 12], main=True, commit=True, world=world,
                           ranks=list(range(n * per_node, (n + 1) * per_node)), cut_rng=12 if n else None)
                 for n in range(2)]  # fmt: skip
    opened = []
    real_open = type(tmp_path).open
    monkeypatch.setattr(type(tmp_path), "open", lambda self, *a, **k: opened.append(self.name) or real_open(self, *a, **k))
    ranks = [decision.Rank(r, world, disks[r // per_node], walker=r % per_node == 0, node=r // per_node) for r in range(world)]
    verdicts, rounds = decision.lockstep(ranks)
    assert {v.step for v in verdicts} == {8} and {v.error for v in verdicts} == {None}
    assert rounds == 3  # the listing and token; checkpoint-12; checkpoint-8
    walkers = [v.walked for v in verdicts]
    assert walkers == [r == 0 or (layout == "local" and r == per_node) for r in range(world)]
    assert "rng_state_11.pth (cut while being written)" in verdicts[11].lacks[12]


def test_older_checkpoints_are_judged_only_for_the_cleanup_and_only_by_walkers(tmp_path):
    """Newest first: nothing older than the one taken is judged by the walk; the cleanup rules still see rotation's garbage."""
    shared = tmp_path / "shared"
    for step in (4, 8, 12):
        folder = make_checkpoint(shared, step, world=WORLD)
        checkpoints.write_marker(folder, step, WORLD, False, "rank0")
    half = make_checkpoint(shared, 2, world=WORLD)  # rotation's rmtree killed half way (no marker: an old save)
    (half / "trainer_state.json").unlink()
    (shared / "checkpoint-4" / "optimizer.pt").unlink()  # a marked one is not judged below the step taken
    walker, other = decide(shared, shared)
    assert walker.step == 12 and walker.lacks == {} and walker.rounds == 2
    assert walker.judge(half) == ["trainer_state.json (never written: a save cut before its end, or a folder no save wrote)"]
    assert walker.judge(shared / "checkpoint-4") == [] and walker.judge(shared / "checkpoint-12") == []
    assert other.judge(half) == []  # not a walker: deletes nothing, judges nothing


def test_a_file_truncated_after_the_commit_is_caught_by_the_walk(tmp_path):
    """A disk fault after the save (the marker is there): the walker's listing sees the size; the one before is taken."""
    node0 = node_disk(tmp_path, 0, [4, 8], main=True, commit=True)
    node1 = node_disk(tmp_path, 1, [4, 8], main=True, commit=True)
    truncate(node1 / "checkpoint-8" / "rng_state_1.pth")
    truncate(node0 / "checkpoint-8" / "optimizer.pt")
    v0, v1 = decide(node0, node1)
    assert (v0.step, v1.step) == (4, 4)
    assert any(lack.startswith("optimizer.pt (") and "since the save" in lack for lack in v0.lacks[8])
    assert any(lack.startswith("rng_state_1.pth (") and "since the save" in lack for lack in v1.lacks[8])
