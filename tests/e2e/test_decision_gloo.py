"""The resume decision on 16 real processes over gloo (2 nodes x 8, torchrun), decision only: no model, seconds.

Each node is ``torchrun --nnodes 2 --nproc_per_node 8 --node_rank N`` on 127.0.0.1. Node-local
disks: each node runs in its own mount namespace (``unshare -m``) with ``output_dir`` bind-mounted
to a folder of its own, as tests/e2e/test_nodes.py does; shared: both see one folder. The newest
checkpoint was cut while rank 11 (node 1) wrote its RNG state. Every rank must take the same,
previous checkpoint; the ranks that are not their node's walker open no file; one walker judges a
shared disk. Needs root for the mounts (skips naming why elsewhere).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.nodes]  # 16 torch processes start in about a minute here: the nodes session

sys.path.insert(0, str(Path(__file__).parents[1]))
import scale_fixture  # noqa: E402

HERE = Path(__file__).parent
WORLD, PER_NODE, COUNT = 16, 8, 4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mounts(tmp_path) -> str | None:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "--bind", str(probe), str(probe)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def _run(tmp_path, layout: str) -> list[dict]:
    disks = scale_fixture.build(tmp_path / "disks", WORLD, COUNT, PER_NODE, layout=layout, cut=11)
    output_dir, results = tmp_path / "output_dir", tmp_path / "results"
    output_dir.mkdir()
    results.mkdir()
    port = _port()
    env = {**os.environ, "SAVEFIX_AGREE_SECONDS": "120", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1] / "patches")}
    procs = []
    for node in range(2):
        run = (f"{sys.executable} -m torch.distributed.run --nnodes 2 --nproc_per_node {PER_NODE} --node_rank {node} "
               f"--master_addr 127.0.0.1 --master_port {port} {HERE / 'decision_worker.py'} {output_dir} {results}")  # fmt: skip
        shell = f"mount --bind {disks[node]} {output_dir} && exec {run}"
        procs.append(subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", shell], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    return sorted((json.loads(f.read_text()) for f in results.glob("rank-*.json")), key=lambda r: r["rank"])


@pytest.mark.parametrize("layout", ["shared", "local"])
def test_sixteen_gloo_processes_agree_on_the_newest_whole_checkpoint(tmp_path, layout):
    why = _mounts(tmp_path)
    if why:
        pytest.skip(f"node-local disks need `unshare -m` and `mount --bind` (root): not permitted here ({why})")
    ranks = _run(tmp_path, layout)
    assert [r["rank"] for r in ranks] == list(range(WORLD))
    newest_whole = (COUNT - 1) * 10  # the newest was cut on node 1
    assert {(r["step"], r["error"]) for r in ranks} == {(newest_whole, None)}
    walkers = [r["rank"] for r in ranks if r["walked"]]
    assert walkers == ([0] if layout == "shared" else [0, PER_NODE])  # a shared disk: rank 0's token, one walker
    # the ranks that are not walkers: their own RNG file of the cut checkpoint (no marker), and a stood-down walker rank 0's token
    opens = {r["rank"]: r["opens"] for r in ranks if not r["walked"]}
    assert opens == {r: 1 + (layout == "shared" and r == PER_NODE) for r in opens}, [(r["rank"], r["opened"]) for r in ranks]
    assert max(r["opens"] for r in ranks if r["walked"]) <= 64
    assert {r["rounds"] for r in ranks} == {3}  # the listing and token; the cut one; the one taken
