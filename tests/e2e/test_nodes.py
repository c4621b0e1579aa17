"""Two nodes on one machine, each with its own ``output_dir`` (node-local disks), and a shared disk as the control.

Each node is ``torchrun --nnodes 2 --nproc_per_node 1 --node_rank R`` on 127.0.0.1 (a free
port), started in its own mount namespace (``unshare -m``) with ``output_dir`` bind-mounted to
a folder of its own: the two processes see different ``output_dir`` contents, as two machines
with local disks do, and the folders keep them between runs. Rank 1 is SIGKILLed while it
writes its RNG state of the third save (tests/e2e/kill_shim.py), or the run ends cleanly; then
the same command again, with ``auto_resume_from_checkpoints: true`` all along. Every run is
time-bounded: a hang fails the test. Needs root (mounts): skips with a message elsewhere.
"""

import json
import os
import signal
import subprocess
import sys
import time

import cases
import harness
import pytest
import reference
import yaml
from fixture import OFFLINE

pytestmark = [pytest.mark.e2e, pytest.mark.nodes]

HERE = harness.Path(__file__).parent
CASE = cases.case("reported")  # 60 samples, micro batch 2, 4 saves per epoch, 2 epochs
WORLD = 2  # two nodes of one process each
RUN_SECONDS = 600  # one run of both nodes; past it the run is killed and the test fails
ENV = {"PYTHONPATH": str(HERE), "ACCELERATE_USE_CPU": "true", "SAVEFIX_AGREE_SECONDS": "120"}
NOT_SHARED = "output_dir is not shared between the nodes"
RESULTS = os.environ.get("SAVEFIX_NODES_REPORT")  # JSON lines: saved and kept steps per case and node


def _mounts_permitted(tmp) -> str | None:
    a, b = tmp / "probe-a", tmp / "probe-b"
    a.mkdir(exist_ok=True)
    b.mkdir(exist_ok=True)
    try:
        proc = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", f"mount --bind {a} {b}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


@pytest.fixture(scope="module")
def root(e2e_root):
    why = _mounts_permitted(e2e_root)
    if why:
        pytest.skip(f"two nodes need `unshare -m` and `mount --bind` (root): not permitted here ({why})")
    return e2e_root


def _expected(*, stock: bool = False) -> list[int]:
    L = CASE["samples"] // (CASE["micro_batch"] * WORLD)
    G, k, epochs = CASE["grad_accum"], CASE["saves_per_epoch"], CASE["num_epochs"]
    M = reference.axolotl_max_steps(CASE["samples"], CASE["micro_batch"], G, epochs, WORLD)
    return reference.stock_saves(L, G, k, epochs, M) if stock else reference.patched_saves(L, G, k, M)


def _stock_kept(saved: list[int]) -> list[int]:
    return saved[-4:]  # stock: save_total_limit unset becomes 4 (reference.py's rotation rule)


def _config(root, name, *, plugin, on_each_node=None):
    config = harness.write_config(CASE, root / name, plugin=plugin)
    cfg = yaml.safe_load(config.read_text())
    cfg["plugins"] = ["cpu_ddp_shim.CpuDdpShim", "kill_shim.KillShim", *(cfg.get("plugins") or [])]
    cfg["auto_resume_from_checkpoints"] = True
    if on_each_node is not None:
        cfg["save_on_each_node"] = on_each_node
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def _node_dirs(config, shared: bool) -> list[harness.Path]:
    """Each node's disk: the folder bind-mounted on ``output_dir`` in that node's namespace."""
    dirs = [config.parent / "shared-disk"] * 2 if shared else [config.parent / f"node{r}-disk" for r in range(2)]
    for folder in [*dirs, harness.output_dir(config)]:
        folder.mkdir(parents=True, exist_ok=True)
    return dirs


def _run_nodes(config, disks, log_name, kill_at=None) -> list[tuple[int, str]]:
    """Both nodes of one run, at once; each node's exit status and log. A run past RUN_SECONDS fails the test."""
    out = harness.output_dir(config)
    port = harness.free_port()
    bindir = harness.Path(sys.executable).parent
    env = {**os.environ, **OFFLINE, **ENV, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    if kill_at:
        env["SAVEFIX_KILL_AT"] = kill_at
    procs = []
    for node, disk in enumerate(disks):
        torchrun = [
            str(bindir / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "axolotl.cli.train", str(config),
        ]  # fmt: skip
        script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(disk), str(out), *torchrun]
        log = open(config.parent / f"{log_name}-node{node}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log))
    deadline = time.monotonic() + RUN_SECONDS
    results = []
    try:
        for proc, _ in procs:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            results.append(code)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the session this test started, by its id
                proc.wait()
            log.close()
    logs = [(config.parent / f"{log_name}-node{n}.log").read_text() for n in range(2)]
    if len(results) < 2:
        pytest.fail(f"the two nodes did not finish within {RUN_SECONDS} s (a hang):\n" + "\n".join(x[-3000:] for x in logs))
    return list(zip(results, logs, strict=True))


def _kept(disk) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in disk.glob("checkpoint-*"))


def _set_aside(disk) -> list[str]:
    return sorted(p.name for p in disk.glob("incomplete-*"))


def _record(case: str, run: str, disks, results, saved: list[int]) -> dict:
    line = {
        "case": case,
        "run": run,
        "exit": [code for code, _ in results],
        "saved": saved,
        "kept": {f"node{n}": _kept(d) for n, d in enumerate(disks)},
        "set_aside": {f"node{n}": _set_aside(d) for n, d in enumerate(disks)},
    }
    if RESULTS:
        with open(RESULTS, "a") as f:
            f.write(json.dumps(line) + "\n")
    return line


def _saved(log: str) -> list[int]:
    return [int(m) for m in harness.SAVE_LINE.findall(log)]


def _assert_loadable_by(disk, step, rank, *, whole: bool):
    """What rank ``rank`` loads on resume is on its node's disk (files checked directly, not with the package)."""
    folder = disk / f"checkpoint-{step}"
    assert (folder / f"rng_state_{rank}.pth").is_file()
    if whole:
        assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == step
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
            assert (folder / name).is_file(), folder / name


@pytest.mark.parametrize("killed", [True, False], ids=["killed", "clean"])
def test_local_disks_save_on_each_node_resumes_on_both_nodes_from_the_same_step(killed, root):
    expected = _expected()
    cut = expected[2]
    name = f"nodes-local-each-{'killed' if killed else 'clean'}"
    config = _config(root, name, plugin=True, on_each_node=True)
    disks = _node_dirs(config, shared=False)

    first = _run_nodes(config, disks, "first", kill_at=f"{cut}:rng:1" if killed else None)
    line = _record(name, "first", disks, first, _saved(first[0][1]))
    if killed:
        assert first[1][0] != 0 and f"[kill_shim] SIGKILL while writing checkpoint-{cut}/rng_state_1.pth" in first[1][1]
        assert line["saved"][:2] == expected[:2]
    else:
        assert [code for code, _ in first] == [0, 0], first[0][1][-3000:] + first[1][1][-3000:]
        assert line["saved"] == expected
        for node, disk in enumerate(disks):  # each node wrote whole checkpoints, its rank's RNG state in them
            assert _kept(disk) == expected
            for step in expected:
                _assert_loadable_by(disk, step, node, whole=True)
    resumed_from = expected[1] if killed else expected[-1]
    started = time.time()

    second = _run_nodes(config, disks, "second")
    line = _record(name, "second", disks, second, _saved(second[0][1]))
    assert [code for code, _ in second] == [0, 0], second[0][1][-3000:] + second[1][1][-3000:]
    log0 = second[0][1]
    assert f"resume from checkpoint at {harness.output_dir(config) / f'checkpoint-{resumed_from}'}" in log0
    assert line["saved"] == [s for s in expected if s > resumed_from]  # nothing from step 0 again
    for node, disk in enumerate(disks):
        assert _kept(disk) == expected, (node, _kept(disk))
        for step in expected:
            _assert_loadable_by(disk, step, node, whole=True)
        # the same step on both nodes: neither node wrote its checkpoints up to resumed_from again
        for step in (s for s in expected if s <= resumed_from):
            assert (disk / f"checkpoint-{step}" / f"rng_state_{node}.pth").stat().st_mtime < started
        assert _set_aside(disk) == ([f"incomplete-checkpoint-{cut}"] if killed else [])
    if killed:
        assert f"resume decision taken by all 2 ranks: checkpoint-{resumed_from}" in log0


@pytest.mark.parametrize("killed", [True, False], ids=["killed", "clean"])
def test_local_disks_without_save_on_each_node_stop_every_rank_with_one_clear_error(killed, root):
    expected = _expected()
    cut = expected[2]
    name = f"nodes-local-main-only-{'killed' if killed else 'clean'}"
    config = _config(root, name, plugin=True)
    disks = _node_dirs(config, shared=False)

    first = _run_nodes(config, disks, "first", kill_at=f"{cut}:rng:1" if killed else None)
    _record(name, "first", disks, first, _saved(first[0][1]))
    if not killed:
        assert [code for code, _ in first] == [0, 0], first[0][1][-3000:] + first[1][1][-3000:]
    whole = expected[1] if killed else expected[-1]  # the newest checkpoint the run saved whole, across the nodes
    before = [(_kept(d), _set_aside(d)) for d in disks]
    # node 0 holds everything but rank 1's RNG state, node 1 only rank 1's RNG state (Transformers' should_save)
    assert not (disks[0] / f"checkpoint-{whole}" / "rng_state_1.pth").exists()
    assert not (disks[1] / f"checkpoint-{whole}" / "trainer_state.json").exists()

    second = _run_nodes(config, disks, "second")
    line = _record(name, "second", disks, second, _saved(second[0][1]))
    assert all(code != 0 for code, _ in second)
    for _code, log in second:  # every rank stops with the same one clear error
        error = next(x for x in log.splitlines() if NOT_SHARED in x)
        assert f"checkpoint-{whole} was saved whole" in error
        lacks = error.split("node 1 (rank 1) lacks ")[1].split(" in ")[0].split(", ")
        assert {"trainer_state.json", "model.safetensors", "optimizer.pt"} <= set(lacks) and "rng_state_0.pth" not in lacks
        assert "node 0 (rank 0) lacks" not in error and "save_on_each_node: true" in error
    assert line["saved"] == []  # never a silent restart from step 0
    assert [(_kept(d), _set_aside(d)) for d in disks] == before  # nothing moved or deleted on either node


def test_shared_disk_one_rank_killed_resumes(root):
    """The control: one folder for both nodes (save_on_each_node off, as on shared storage)."""
    expected = _expected()
    cut = expected[2]
    config = _config(root, "nodes-shared-killed", plugin=True)
    disks = _node_dirs(config, shared=True)
    first = _run_nodes(config, disks, "first", kill_at=f"{cut}:rng:1")
    _record("nodes-shared-killed", "first", disks[:1], first, _saved(first[0][1]))
    assert first[1][0] != 0

    second = _run_nodes(config, disks, "second")
    line = _record("nodes-shared-killed", "second", disks[:1], second, _saved(second[0][1]))
    assert [code for code, _ in second] == [0, 0], second[0][1][-3000:] + second[1][1][-3000:]
    assert line["saved"] == [s for s in expected if s > expected[1]]
    assert _kept(disks[0]) == expected
    for step in expected:
        for rank in range(WORLD):
            _assert_loadable_by(disks[0], step, rank, whole=True)
    assert _set_aside(disks[0]) == [f"incomplete-checkpoint-{cut}"]


@pytest.mark.parametrize("killed", [True, False], ids=["killed", "clean"])
def test_stock_local_disks_fail_on_resume(killed, root):
    """Stock beside patched: Axolotl's schema drops save_on_each_node, so node 1 holds only its RNG state."""
    expected = _expected(stock=True)
    cut = expected[2]
    name = f"nodes-stock-local-{'killed' if killed else 'clean'}"
    config = _config(root, name, plugin=False)
    disks = _node_dirs(config, shared=False)
    first = _run_nodes(config, disks, "first", kill_at=f"{cut}:rng:1" if killed else None)
    line = _record(name, "first", disks, first, _saved(first[0][1]))
    if not killed:
        assert [code for code, _ in first] == [0, 0]
        assert line["saved"] == expected and _kept(disks[0]) == _stock_kept(expected)
    second = _run_nodes(config, disks, "second")
    _record(name, "second", disks, second, _saved(second[0][1]))
    assert all(code != 0 for code, _ in second)
    assert "Can't find a valid checkpoint" in second[1][1]
