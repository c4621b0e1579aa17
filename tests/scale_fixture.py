"""A synthetic ``output_dir`` as a DDP job of W ranks leaves it, for the scale benchmark and the 16-process test.

Each ``checkpoint-N`` holds what Transformers writes (weights, optimizer, scheduler,
``trainer_state.json`` with the fix's record, one ``rng_state_R.pth`` per rank), in the real
formats (a safetensors header, torch's zip), small; then the commit marker, as CommitMarker writes
it after the save. ``layout``: ``"shared"`` (one folder every rank sees) or ``"local"`` (one folder
per node of ``per_node`` ranks, each node's main process writing the main files:
``save_on_each_node``). ``cut``: the newest checkpoint was cut while rank ``cut`` wrote its RNG state
(truncated, no marker), as a kill leaves it.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

from axolotl_savefix.rules import checkpoints

RECORD = checkpoints.RECORD


def _torch_zip(payload: bytes = b"x" * 900) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", payload)
    return buffer.getvalue()


def _safetensors(n: int = 256) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * (4 * n)


TORCH_FILE, WEIGHTS = _torch_zip(), _safetensors()


def _checkpoint(folder: Path, step: int, world: int, ranks: range, *, commit: bool) -> None:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(WEIGHTS)
    for name in ("optimizer.pt", "scheduler.pt"):
        (folder / name).write_bytes(TORCH_FILE)
    for r in ranks:
        (folder / checkpoints.rng_name(r, world)).write_bytes(TORCH_FILE)
    record = {"args": {}, "attributes": {"world_size": world, "save_only_model": False}}
    state = {"global_step": step, "stateful_callbacks": {RECORD: record}}
    (folder / checkpoints.STATE).write_text(json.dumps(state))
    if commit:
        checkpoints.write_marker(folder, step, world, False, "fixture")


def node_dirs(root: Path, world: int, per_node: int, layout: str) -> list[Path]:
    """The ``output_dir`` of each node (the same folder for every node when shared)."""
    nodes = max(1, world // per_node)
    return [root / "shared"] * nodes if layout == "shared" else [root / f"node{n}" for n in range(nodes)]


def build(root: Path, world: int, count: int, per_node: int = 8, *, layout: str = "shared", cut: int | None = None,
          commit: bool = True, every: int = 10) -> list[Path]:  # fmt: skip
    """``count`` checkpoints (steps ``every``, ``2*every``, ...) for ``world`` ranks; returns each node's ``output_dir``."""
    disks = node_dirs(root, world, per_node, layout)
    for n, disk in enumerate(disks):
        if layout == "shared" and n:
            break
        ranks = range(world) if layout == "shared" else range(n * per_node, (n + 1) * per_node)
        for i in range(1, count + 1):
            step = i * every
            newest = i == count
            folder = disk / f"{checkpoints.PREFIX}{step}"
            _checkpoint(folder, step, world, ranks, commit=commit and not (newest and cut is not None))
            if newest and cut is not None and cut in ranks:
                rng = folder / checkpoints.rng_name(cut, world)
                rng.write_bytes(TORCH_FILE[: len(TORCH_FILE) // 2])
    return disks
