"""The resume decision of every rank together, pure: commit markers and listings in, one verdict out.

No Axolotl, no torch: files only, and a collective passed in. Each rank runs :func:`protocol`, a
generator: it yields a vector of integers, gets back the element-wise maximum of every rank's vector
(one all-reduce, ``axolotl_savefix._infra.collectives._all_reduce_max``; :func:`lockstep` in one process),
and returns a :class:`Verdict`, the same step on every rank. Rounds:

0. Rank 0 writes a fresh token into its ``output_dir``; every walker (each node's main process,
   ``LOCAL_RANK`` 0) lists its ``output_dir`` once. Gathered: the token, the newest step anywhere.
   A walker that then reads rank 0's token shares rank 0's disk and stands down: on a shared
   ``output_dir`` one walker (rank 0) judges for the whole job; on node-local disks one per node.
1. Newest first, one step ``S`` per round: each walker judges the main process's files of
   ``checkpoint-S`` on its disk (:func:`main_part`: from the commit marker and one listing, or
   the full rule where there is no marker); every rank checks its own ``rng_state_R.pth`` (a
   ``stat``; one open where there is no marker). Gathered: who lacks what, as codes. ``S`` is
   taken when every rank can load it; the walk stops there and judges no older step. When a
   newer one was *saved whole* (one disk holds the main files, every rank its own RNG state)
   but some node cannot load it, the verdict is the not-shared error (an extra round fetches
   the names that node lacks).

Per rank: one listing and at most two opens per round (walkers: the marker, or every main file of
a checkpoint without one); on the wire a vector of ``8 + len(VOCABULARY)`` int64 per round.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoints
from .checkpoints import GONE, NO_WEIGHTS, STATE

TOKEN = ".savefix-resume-token"  # rank 0's, in output_dir, for the length of one decision

# what a rank lacks, as a code the others can read (what the vector carries)
FOLDER, STATE_BAD, WEIGHTS, OPTIMIZER, CHANGED, RNG_ABSENT, RNG_CUT, OTHER = range(1, 9)
CODE_TEXT = {
    FOLDER: "the folder (not in its output_dir)",
    STATE_BAD: f"{STATE} (missing, cut, or of another step)",
    WEIGHTS: "the model weights",
    OPTIMIZER: "the optimizer state",
    CHANGED: "a file truncated or changed since the save",
    RNG_ABSENT: "its own RNG state (never written)",
    RNG_CUT: "its own RNG state (cut while being written)",
    OTHER: "a file of the save (cut or missing)",
}
# the main files a not-shared error can name, one vector entry each
VOCABULARY = (
    "adapter_config.json",
    "adapter_model.bin",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "latest",
    "model.safetensors",
    "model.safetensors.index.json",
    "optimizer.bin",
    "optimizer.pt",
    "optimizer_0",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model_fsdp_0",
    "scaler.pt",
    "scheduler.pt",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "trainer_state.json",
    "training_args.bin",
)
WEIGHT_FILES = (  # what Transformers' _load_from_checkpoint accepts as the model's weights
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
(MAIN_FAIL, MAIN_HELD, WORLD, SAVE_ONLY, OWN_ABSENT, OWN_CUT, NEXT, STEP) = range(8)
WIDTH = 8 + len(VOCABULARY)


@dataclass(frozen=True)
class Rank:
    """One process: ``rank`` of ``world``; ``walker``: its node's main process; ``node``: its node's index (-1 unknown)."""

    rank: int
    world: int
    output_dir: Path
    walker: bool
    node: int = -1


@dataclass(frozen=True)
class Main:
    """What a walker found of the main process's files of one ``checkpoint-N`` on its disk (:func:`main_part`)."""

    lacks: list[str]
    world: int  # the run's recorded world size; 0 without a record
    save_only_model: bool
    names: frozenset[str]  # the folder's top-level names
    marked: bool  # judged from a commit marker
    notes: tuple[str, ...] = ()  # bad input set aside (a marker or record that is not one)


@dataclass(frozen=True)
class Verdict:
    """The decision, the same ``step`` and ``error`` on every rank.

    ``step``: the newest checkpoint every rank can load (None: none); ``lacks``: by step, each checkpoint
    the walk judged incomplete, with what this rank found (its own disk) or, where its own part was
    whole, which rank lacks what; ``error``: the not-shared error (names the node, the folder and the fix);
    ``rounds``: collectives taken; ``walked``: this rank judged its disk's main files (its node's writer
    of commit markers); ``shared``: this rank's ``output_dir`` is rank 0's.
    """

    step: int | None
    lacks: dict[int, list[str]] = field(default_factory=dict)
    error: str | None = None
    rounds: int = 0
    walked: bool = False
    shared: bool = False
    notes: tuple[str, ...] = ()  # what this rank's walk set aside as bad input (a marker or record that is not one)

    def judge(self, path: str | os.PathLike[str]) -> list[str]:
        """What ``checkpoint-N`` at ``path`` lacks for this job: the walk's finding, or (on a walker) :func:`older_lacks`."""
        folder = Path(path)
        step = checkpoints.step_of(folder)
        if step is None:
            return [GONE]
        if step in self.lacks:
            return self.lacks[step]
        if (self.step is not None and step == self.step) or not self.walked:
            return []  # a rank that did not walk deletes nothing: the older folders are its walker's to judge
        return older_lacks(folder)


def older_lacks(folder: Path) -> list[str]:
    """A checkpoint older than the one taken, for the cleanup rules only: with a marker not judged; without, the full rule."""
    if (folder / checkpoints.MARKER).is_file():
        return []
    try:
        main = main_part(folder)
    except FileNotFoundError:
        return [GONE]
    return main.lacks


def _has_weights(folder: Path) -> bool:
    """The weights on this disk (rule 1 implies them on one disk; on a node that did not write them it does not)."""
    if any((folder / name).is_file() for name in WEIGHT_FILES):
        return True
    with os.scandir(folder) as scan:
        subfolders = [Path(entry.path) for entry in scan if entry.is_dir()]
    for sub in subfolders:
        if sub.name.startswith(("pytorch_model_fsdp_", "global_step")):
            return True
        if any((sub / name).is_file() for name in WEIGHT_FILES[4:]):  # an adapter in a subfolder
            return True
    return False


def main_part(folder: Path) -> Main:
    """The main process's files of ``checkpoint-N`` at ``folder`` on this disk: rule 0 with a marker, else rules 1 to 3.

    Every RNG file is left to its own rank, except that rule 0 checks each listed file's size. A
    marker or record that is bad input is set aside with a note (:func:`checkpoints.load_marker`).
    Raises FileNotFoundError when ``folder`` is not there.
    """
    marker, note = checkpoints.load_marker(folder)
    notes = (note,) if note else ()
    if marker is not None:
        now = checkpoints.listing(folder)
        lacks = checkpoints.marker_main_lacks(marker, now)
        changed = [  # the RNG files on this disk: sizes only (W of them on a shared disk: sort the few that differ)
            (name, size)
            for name, size in marker["files"].items()
            if name.startswith(checkpoints.RNG_PREFIX) and name in now and now[name] != size
        ]
        for name, size in sorted(changed):
            lacks.append(f"{name} ({now[name]} bytes, {size} when saved: truncated or changed since the save)")
        names = frozenset(name.split("/", 1)[0] for name in now)
        return Main(lacks, marker["world_size"], marker["save_only_model"], names, True, notes)
    judged = checkpoints._judge_files(folder, notes, ranks=[], skip_rng=True)
    lacks = [p for p in judged.lacks if p != NO_WEIGHTS]
    if not _has_weights(folder):
        lacks.append(f"{NO_WEIGHTS.split(' (')[0]} (never written on this disk)")
    state, _ = checkpoints.read_state(folder)
    run = checkpoints.record(state)
    world = run["world_size"] if run else 0
    with os.scandir(folder) as scan:
        names = frozenset(entry.name for entry in scan)
    return Main(lacks, world, bool(run and run.get("save_only_model")), names, False, judged.notes)


def own_part(folder: Path, rank: int, world: int) -> int:
    """This rank's ``rng_state_R.pth``: 0 (whole, or size-checked by the marker's walker), RNG_ABSENT, RNG_CUT or FOLDER.

    A ``stat``; with no commit marker in the folder, one open (the torch zip's end) as well.
    """
    name = folder / checkpoints.rng_name(rank, world)
    try:
        name.stat()
    except FileNotFoundError:
        return RNG_ABSENT if folder.is_dir() else FOLDER
    if (folder / checkpoints.MARKER).is_file():
        return 0
    return 0 if checkpoints._whole(name) else RNG_CUT


def _code(lack: str) -> int:
    if lack == GONE:
        return FOLDER
    if lack.startswith((STATE, checkpoints.MARKER)):
        return STATE_BAD
    if lack.startswith((NO_WEIGHTS.split(" (")[0], "model.safetensors (or")):
        return WEIGHTS
    if lack.startswith("the optimizer state"):
        return OPTIMIZER
    if "since the save" in lack:
        return CHANGED
    return OTHER


def _key(world: int, rank: int, code: int, node: int) -> int:
    """One vector entry whose maximum over ranks is the lowest rank with its code and node."""
    return ((world - rank) << 40) | (code << 32) | (node + 1)


def _unkey(world: int, key: int) -> tuple[int, int, int]:
    return world - (key >> 40), (key >> 32) & 0xFF, (key & 0xFFFFFFFF) - 1


def _who(world: int, key: int) -> str:
    rank, _, node = _unkey(world, key)
    return f"node {node if node >= 0 else '?'} (rank {rank})"


def _write_token(output_dir: Path) -> int:
    nonce = secrets.randbits(62) | 1
    try:
        temporary = output_dir / f"{TOKEN}.{os.getpid()}.tmp"
        temporary.write_bytes(str(nonce).encode())
        os.replace(temporary, output_dir / TOKEN)
    except OSError:
        return 0  # no output_dir (a first run): every node walks its own
    return nonce


def _read_token(output_dir: Path) -> int:
    try:
        return int((output_dir / TOKEN).read_bytes())
    except (OSError, ValueError):
        return 0


def _remove_token(output_dir: Path) -> None:
    try:
        (output_dir / TOKEN).unlink()
    except OSError:
        pass


def protocol(me: Rank) -> Generator[list[int], list[int], Verdict]:
    """One rank's part of the decision (module docstring): yields its vectors, returns the verdict."""
    out, world = Path(me.output_dir), me.world
    steps = [checkpoints.step_of(p) or 0 for p in checkpoints.checkpoints(out)] if me.walker or me.rank == 0 else []
    nonce = _write_token(out) if me.rank == 0 else 0
    first = [0] * WIDTH
    first[0], first[1] = nonce, (steps[-1] + 1) if steps else 0
    got = yield first
    rounds = 1
    nonce, step = got[0], got[1] - 1
    shared = me.rank == 0 or (me.walker and bool(nonce) and _read_token(out) == nonce)
    walking = me.rank == 0 or (me.walker and not shared)
    lacks: dict[int, list[str]] = {}
    notes: list[str] = []
    taken: int | None = None
    error: str | None = None
    if step < 0:
        yield [0] * WIDTH  # one more round: every walker has read the token before rank 0 removes it
        rounds += 1
        if me.rank == 0:
            _remove_token(out)
    while step >= 0:
        folder = out / f"{checkpoints.PREFIX}{step}"
        vector = [0] * WIDTH
        vector[STEP] = step + 1
        main: Main | None = None
        local: list[str] = []
        if walking:
            try:
                main = main_part(folder)
            except FileNotFoundError:
                local = [GONE]
                vector[MAIN_FAIL] = _key(world, me.rank, FOLDER, me.node)
            else:
                local = list(main.lacks)
                notes += main.notes
                if main.lacks:
                    vector[MAIN_FAIL] = _key(world, me.rank, _code(main.lacks[0]), me.node)
                else:
                    vector[MAIN_HELD] = _key(world, me.rank, 0, me.node)
                    for i, name in enumerate(VOCABULARY):
                        vector[8 + i] = int(name in main.names)
                vector[WORLD], vector[SAVE_ONLY] = main.world, int(main.save_only_model)
            below = [s for s in steps if s < step]
            vector[NEXT] = (below[-1] + 1) if below else 0
        own = own_part(folder, me.rank, world)
        if own in (RNG_ABSENT, FOLDER):
            vector[OWN_ABSENT] = _key(world, me.rank, own, me.node)
        elif own == RNG_CUT:
            vector[OWN_CUT] = _key(world, me.rank, own, me.node)
        got = yield vector
        rounds += 1
        if rounds == 2 and me.rank == 0:
            _remove_token(out)
        recorded, save_only = got[WORLD], bool(got[SAVE_ONLY])
        absent_rank = _unkey(world, got[OWN_ABSENT])[0] if got[OWN_ABSENT] else None
        rng_needed = recorded > 0 and not save_only
        own_fails = bool(got[OWN_CUT]) or (rng_needed and absent_rank is not None and absent_rank < recorded)
        if own == RNG_CUT:
            local.append(f"{checkpoints.rng_name(me.rank, world)} (cut while being written)")
        elif own == RNG_ABSENT and rng_needed and me.rank < recorded:
            local.append(f"{checkpoints.rng_name(me.rank, world)} (rank {me.rank} of {recorded})")
        elif own == FOLDER and GONE not in local:
            local.append(GONE)
        if not got[MAIN_FAIL] and not own_fails:
            taken = step
            break
        if local:
            lacks[step] = local
        else:
            first_key = got[MAIN_FAIL] or got[OWN_CUT] or got[OWN_ABSENT]
            code = _unkey(world, first_key)[1]
            lacks[step] = [f"{_who(world, first_key)}: {CODE_TEXT.get(code, CODE_TEXT[OTHER])}"]
        saved_whole = bool(got[MAIN_HELD]) and (save_only or (recorded == world and not own_fails))
        if saved_whole and got[MAIN_FAIL]:
            lacker = _unkey(world, got[MAIN_FAIL])[0]
            detail = [0] * WIDTH
            if me.rank == lacker:
                detail[0] = int(main is not None)
                for i, name in enumerate(VOCABULARY):
                    detail[8 + i] = int(main is not None and name in main.names)
            found = yield detail
            rounds += 1
            error = _not_shared(step, out, world, got, found)
            break
        step = got[NEXT] - 1
    return Verdict(taken, lacks, error, rounds, walking, shared, tuple(notes))


def _not_shared(step: int, out: Path, world: int, got: list[int], found: list[int]) -> str:
    folder = f"{checkpoints.PREFIX}{step}"
    holder, lacker = _who(world, got[MAIN_HELD]), _who(world, got[MAIN_FAIL])
    if not found[0]:
        what = f"{lacker} has no {folder} in its output_dir {out}"
    else:
        names = [name for i, name in enumerate(VOCABULARY) if got[8 + i] and not found[8 + i]]
        code = _unkey(world, got[MAIN_FAIL])[1]
        what = f"{lacker} lacks {', '.join(names) or CODE_TEXT.get(code, CODE_TEXT[OTHER])} in {out}/{folder}"
    return (
        f"output_dir is not shared between the nodes: {folder} was saved whole (its trainer_state.json, weights and "
        f"optimizer on {holder.split(' (')[0]}, every rank's RNG state on its own node), but {what} (the lowest rank "
        "that cannot load it). Every rank resumes from its own output_dir. Put output_dir on storage every node "
        "mounts, or set save_on_each_node: true (with the axolotl_savefix plugin) so that each node writes a whole "
        "checkpoint. Nothing was moved or deleted."
    )


def run(me: Rank, all_reduce_max) -> Verdict:  # noqa: ANN001 - a callable list[int] -> list[int]
    """Drive :func:`protocol` for this rank with a real collective (``all_reduce_max``: element-wise max over ranks)."""
    steps = protocol(me)
    vector = next(steps)
    while True:
        try:
            vector = steps.send(all_reduce_max(vector))
        except StopIteration as done:
            return done.value


def lockstep(ranks: list[Rank]) -> tuple[list[Verdict], int]:
    """Every rank's :func:`protocol` in one process, each round reduced here: the verdicts and the rounds taken.

    For tests and the scale benchmark (a fake process group). Raises AssertionError when the ranks
    disagree on the round's width or on when to stop (a protocol bug, never a user's).
    """
    running = [protocol(me) for me in ranks]
    vectors = [next(g) for g in running]
    rounds = 0
    while True:
        assert len({len(v) for v in vectors}) == 1, "ranks yield vectors of different widths"
        reduced = [max(column) for column in zip(*vectors, strict=True)]
        rounds += 1
        outcomes = []
        for g in running:
            try:
                outcomes.append(("more", g.send(list(reduced))))
            except StopIteration as done:
                outcomes.append(("done", done.value))
        kinds = {kind for kind, _ in outcomes}
        assert len(kinds) == 1, "ranks stop at different rounds"
        if kinds == {"done"}:
            return [value for _, value in outcomes if isinstance(value, Verdict)], rounds
        vectors = [value for _, value in outcomes if isinstance(value, list)]
