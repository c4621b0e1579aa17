"""Several nodes: what each rank can load of a checkpoint (rank_view), and the decision every rank shares (agree).

Node disks are built file by file as Transformers writes them: with ``save_on_each_node``
every node's main process writes the main files; without it only rank 0 (node 0) does; every
rank writes its own ``rng_state_R.pth`` to its own node's disk.
"""

from test_checkpoints import make_checkpoint, torch_zip, truncate

from axolotl_savefix import checkpoints

WORLD = 2


def node_disk(root, node, steps, *, main: bool, cut_rng: int | None = None, rng_from: int | None = None):
    """Node ``node``'s output_dir: each step's main files (when this node's main process writes them) and rng_state_node."""
    disk = root / f"node{node}"
    for step in steps:
        if main:
            folder = make_checkpoint(disk, step, world=WORLD)
            for r in range(WORLD):
                if r != node:
                    (folder / f"rng_state_{r}.pth").unlink()
        else:
            folder = disk / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            torch_zip(folder / f"rng_state_{node}.pth")
        if step == cut_rng:
            truncate(folder / f"rng_state_{node}.pth")
        if rng_from is not None and step >= rng_from:
            (folder / "trainer_state.json").unlink()  # the save was cut before its last file
    return disk


def gather(*disks):
    return [{"rank": r, "node": str(r), "output_dir": str(d), "views": checkpoints.views(d, r, WORLD)} for r, d in enumerate(disks)]


def test_a_rank_needs_only_its_own_rng_file(tmp_path):
    disk = node_disk(tmp_path, 0, [8], main=True)
    view = checkpoints.rank_view(disk / "checkpoint-8", 0, WORLD)
    assert view["lacks"] == [] and view["main"] and view["own"] == "whole"
    assert checkpoints.missing(disk / "checkpoint-8") == ["rng_state_1.pth (rank 1 of 2)"]  # one disk: the old rule


def test_a_node_without_the_main_files_tells_its_own_part(tmp_path):
    disk = node_disk(tmp_path, 1, [4, 8], main=False, cut_rng=8)
    whole, cut = checkpoints.rank_view(disk / "checkpoint-4", 1, WORLD), checkpoints.rank_view(disk / "checkpoint-8", 1, WORLD)
    assert whole["own"] == "whole" and not whole["main"] and whole["record"] is None
    assert whole["lacks"] == [
        "trainer_state.json (never written: the save was cut before its end)",
        "model.safetensors (or other model weights) (never written on this node)",
    ]
    assert cut["own"] == "cut" and "rng_state_1.pth (cut while being written)" in cut["lacks"]


def test_save_on_each_node_both_nodes_resume_from_the_newest_both_can_load(tmp_path):
    # node 1 was killed while writing its RNG state of checkpoint-12: its trainer_state.json never came
    node0 = node_disk(tmp_path, 0, [4, 8, 12], main=True)
    node1 = node_disk(tmp_path, 1, [4, 8, 12], main=True, cut_rng=12, rng_from=12)
    agreement = checkpoints.agree(gather(node0, node1))
    assert agreement.step == 8 and agreement.error is None
    assert agreement.judge(node0 / "checkpoint-8") == [] and agreement.judge(node1 / "checkpoint-4") == []
    assert agreement.judge(node0 / "checkpoint-12") == [
        "rank 1 (node 1): trainer_state.json (never written: the save was cut before its end)",
        "rank 1 (node 1): rng_state_1.pth (cut while being written)",
    ]


def test_a_step_one_node_never_started_is_not_resumed(tmp_path):
    node0 = node_disk(tmp_path, 0, [4, 8, 12], main=True)
    node1 = node_disk(tmp_path, 1, [4, 8], main=True)
    agreement = checkpoints.agree(gather(node0, node1))
    assert agreement.step == 8 and agreement.error is None
    assert agreement.judge(node0 / "checkpoint-12") == ["rank 1 (node 1): the folder (not in its output_dir)"]


def test_local_disks_main_only_is_the_not_shared_error(tmp_path):
    node0 = node_disk(tmp_path, 0, [4, 8, 12], main=True)
    node1 = node_disk(tmp_path, 1, [4, 8, 12], main=False, cut_rng=12)
    agreement = checkpoints.agree(gather(node0, node1))
    assert agreement.step is None
    assert agreement.error is not None
    assert agreement.error.startswith("output_dir is not shared between the nodes: checkpoint-8 was saved whole")
    lacks = f"node 1 (rank 1) lacks model.safetensors, optimizer.pt, scheduler.pt, trainer_state.json in {node1}/checkpoint-8"
    assert lacks in agreement.error
    assert "node 0 (rank 0)" not in agreement.error  # node 0 can load all it needs (rank 1's RNG file is not its)
    assert "save_on_each_node: true" in agreement.error


def test_a_shared_disk_is_the_old_rule(tmp_path):
    shared = make_checkpoint(tmp_path / "shared", 8, world=WORLD).parent
    make_checkpoint(shared, 12, world=WORLD)
    truncate(shared / "checkpoint-12" / "rng_state_1.pth")
    agreement = checkpoints.agree(gather(shared, shared))
    assert agreement.step == 8 and agreement.error is None
    for folder in checkpoints.checkpoints(shared):
        assert (agreement.judge(folder) == []) == (checkpoints.missing(folder) == [])


def test_no_checkpoint_saved_whole_anywhere_starts_from_the_beginning(tmp_path):
    node0 = node_disk(tmp_path, 0, [4], main=True, rng_from=4)
    node1 = node_disk(tmp_path, 1, [4], main=False, cut_rng=4)
    agreement = checkpoints.agree(gather(node0, node1))
    assert agreement.step is None and agreement.error is None
    assert checkpoints.agree(gather(tmp_path / "empty0", tmp_path / "empty1")) == checkpoints.Agreement(None, {}, None)


def test_a_node_whose_main_process_did_not_write_the_weights_cannot_load(tmp_path):
    # Axolotl 0.19.0's _save writes the weights on rank 0 only, even with save_on_each_node
    node0 = node_disk(tmp_path, 0, [4, 8], main=True)
    node1 = node_disk(tmp_path, 1, [4, 8], main=True)
    for step in (4, 8):
        (node1 / f"checkpoint-{step}" / "model.safetensors").unlink()
    view = checkpoints.rank_view(node1 / "checkpoint-8", 1, WORLD)
    assert view["lacks"] == ["model.safetensors (or other model weights) (never written on this node)"] and not view["main"]
    agreement = checkpoints.agree(gather(node0, node1))
    assert agreement.step is None
    assert agreement.error and f"node 1 (rank 1) lacks model.safetensors in {node1}/checkpoint-8" in agreement.error
