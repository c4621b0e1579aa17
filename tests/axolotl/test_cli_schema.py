"""``axolotl-savefix plan`` where Axolotl is imported, in a process of its own (issue 32).

A config Axolotl's schema refuses, stock Axolotl's behaviour on the same mistakes beside ours,
and a network that accepts and never answers. Each case starts Axolotl in a child (31 to 43 s
apiece on a 2-core machine, 130 s for the file with the fixture's build): the ``cli`` session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import fixture
import pytest
import yaml

pytestmark = [pytest.mark.axolotl, pytest.mark.inputs]  # about 2 min: a session of its own (`nox -s inputs`)

PATCHES = Path(__file__).resolve().parents[2] / "patches"


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(PATCHES), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **fixture.OFFLINE, "PYTHONPATH": path, **extra}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The tiny local model and tokenizer (tests/fixture.py), built once for the module."""
    return fixture.build(tmp_path_factory.mktemp("cli-fixture"))


def _config(root: Path, model: Path, **overrides) -> Path:
    """A tiny local model and data set as a user's YAML; nothing to download."""
    data = fixture.write_dataset(root / "data.jsonl", 30)
    cfg = {
        "base_model": str(model),
        "model_type": "LlamaForCausalLM",
        "tokenizer_type": "AutoTokenizer",
        "datasets": [{"path": str(data), "ds_type": "json", "type": "completion"}],
        "dataset_prepared_path": str(root / "prepared"),
        "val_set_size": 0,
        "dataset_num_proc": 1,
        "sequence_len": 64,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "num_epochs": 2,
        "saves_per_epoch": 4,
        "optimizer": "adamw_torch",
        "learning_rate": 0.001,
        "output_dir": str(root / "out"),
        **overrides,
    }
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _plan(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "axolotl_savefix", "plan", *map(str, args)]
    return subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def test_a_config_the_schema_refuses_is_one_line_naming_the_key(tmp_path, model):
    config = _config(tmp_path, model, micro_batch_size="abc")
    proc = _plan(config)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == ""
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert str(config) in lines[0] and "micro_batch_size" in lines[0] and "'abc'" in lines[0]


def test_stock_axolotl_on_the_same_mistakes_beside_ours(tmp_path):
    """A missing file and a YAML syntax error: ``python -m axolotl.cli.train`` and ``plan`` side by side."""
    missing = tmp_path / "missing.yml"
    broken = tmp_path / "broken.yml"
    broken.write_text("base_model: x\nnum_epochs: 2\ndatasets: [a, b\nmicro_batch_size: 1\n")
    stocks = {  # both at once: each spends its time importing Axolotl
        path: subprocess.Popen(
            [sys.executable, "-m", "axolotl.cli.train", str(path)], env=_env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        for path in (missing, broken)
    }  # fmt: skip
    for path, stock in stocks.items():
        stock_out, _ = stock.communicate(timeout=300)
        # stock: a failure, told as a Python traceback (or at least not a success)
        assert stock.returncode != 0 or "Traceback" in stock_out, stock_out[-2000:]
        ours = _plan(path)
        assert ours.returncode == 2
        assert "Traceback" not in ours.stdout + ours.stderr
        assert len(ours.stderr.splitlines()) == 1 and str(path) in ours.stderr


class _SilentServer:
    """A loopback TCP server that accepts every connection and never answers; counts them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # kept open, never read nor written

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


BOUND_S = 180  # a plan with data preparation takes about 45 s on 2 busy cores here; a hang never ends


def test_a_network_that_never_answers_is_never_contacted(tmp_path, model):
    """Hub endpoint and every proxy point at a server that accepts and stays silent; telemetry and the Hub left to us."""
    config = _config(tmp_path, model)
    server = _SilentServer()
    url = f"http://127.0.0.1:{server.port}"
    env = _env(HF_ENDPOINT=url, HTTP_PROXY=url, HTTPS_PROXY=url, ALL_PROXY=url, http_proxy=url, https_proxy=url)
    # posthog's host is a constant in every supported release (axolotl/telemetry/manager.py): the proxies cover it
    for key in ("HF_HUB_OFFLINE", "AXOLOTL_DO_NOT_TRACK", "DO_NOT_TRACK", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                "NO_PROXY", "no_proxy"):  # fmt: skip
        env.pop(key, None)
    started = time.monotonic()
    try:
        proc = _plan(config, env=env, timeout=BOUND_S)
    finally:
        wall = time.monotonic() - started
        connections = len(server.accepted)
        server.close()
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert "checkpoint plan for" in proc.stdout
    assert wall < BOUND_S
    assert connections == 0
