"""Axolotl's own example configs as a test corpus: what stock accepts, the plugin accepts too.

For every ``examples/**/*.y*ml`` of an Axolotl source tree (the sdist of the
installed release), with ``base_model`` pointed at the local fixture model and
every output path in a temporary folder (nothing is downloaded):

* stock: Axolotl's real ``load_cfg`` on the config as it is;
* patched: the same config with ``plugins: [..., axolotl_savefix.SaveFixPlugin]``
  (the one line the README tells users to add), through the same ``load_cfg``;
* the two loaded configs are compared key by key;
* ``axolotl-savefix plan --steps-per-epoch N`` runs on both YAML files.

Axolotl is imported once, in the parent; each (config, mode) runs in its own
forked child, so plugins that an example registers (process-wide in Axolotl's
``PluginManager``) and our patches never leak into the next config.

Run: ``python tests/examples/corpus.py EXAMPLES_ROOT OUT.json`` (what
``nox -s examples`` does), or through ``tests/examples/corpus_check.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import sys
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/fixture.py

import fixture  # noqa: E402
import yaml  # noqa: E402

PLUGIN = "axolotl_savefix.SaveFixPlugin"
STEPS_PER_EPOCH = "37"  # the plan's --steps-per-epoch: any N works; 37 divides nothing in the examples

# Keys that point outside this machine or into the user's disk: redirected so the corpus runs offline.
MODEL_KEYS = ("base_model", "base_model_config", "tokenizer_config")
PATH_KEYS = ("output_dir", "dataset_prepared_path")

# The documented differences (docs/user-guide.md, "What the plugin changes in a loaded config"):
#   plugins:    our entry is appended;
#   save_steps: stock derives 1 / (saves_per_epoch * num_epochs) from saves_per_epoch; patched leaves it unset;
#   eval_steps: the same for evals_per_epoch (stock sets it only where there is a validation set).
DOCUMENTED = ("plugins", "save_steps", "eval_steps")


@dataclass
class Load:
    accepted: bool
    error: str = ""  # exception type and its first line, where refused
    error_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    plan_rc: int | None = None
    plan_error: str = ""  # a traceback from `plan`, where it crashed
    plan_head: str = ""


@dataclass
class Outcome:
    name: str
    stock: Load
    patched: Load
    undocumented: dict[str, list[Any]] = field(default_factory=dict)  # key -> [stock, patched]
    documented: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def regression(self) -> bool:
        """Stock accepts it, the plugin refuses it."""
        return self.stock.accepted and not self.patched.accepted


def example_configs(root: Path) -> list[Path]:
    found = sorted({*root.glob("examples/**/*.yml"), *root.glob("examples/**/*.yaml")})
    configs = []
    for path in found:
        with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "base_model" in data:  # a training config, not a data or deepspeed file
                configs.append(path)
    return configs


def prepare(raw: dict[str, Any], model_dir: Path, work: Path, *, plugin: bool) -> dict[str, Any]:
    cfg = dict(raw)
    for key in MODEL_KEYS:
        if key == "base_model" or cfg.get(key):
            cfg[key] = str(model_dir)
    for key in PATH_KEYS:
        cfg[key] = str(work / key)
    if plugin:
        plugins = list(cfg.get("plugins") or [])
        cfg["plugins"] = [*plugins, PLUGIN]
    return cfg


def _plan(path: Path) -> tuple[int | None, str, str]:
    from axolotl_savefix import cli

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(["plan", str(path), "--steps-per-epoch", STEPS_PER_EPOCH])
    except BaseException:  # noqa: BLE001 - a crash of `plan` is what this records
        return None, traceback.format_exc(), ""
    return rc, "", (out.getvalue() or err.getvalue()).splitlines()[0] if (out.getvalue() or err.getvalue()) else ""


def load_one(task: tuple[str, str, str, str, bool]) -> Load:
    """In a fresh fork: Axolotl's ``load_cfg`` on one example, stock or with the plugin line."""
    path, root, model_dir, work_root, plugin = task
    import logging

    logging.disable(logging.CRITICAL)  # hundreds of configs: Axolotl's warnings are not the result
    from axolotl.cli.config import load_cfg

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    work = Path(tempfile.mkdtemp(dir=work_root))
    config = work / "config.yml"
    config.write_text(yaml.safe_dump(prepare(raw, Path(model_dir), work, plugin=plugin), sort_keys=False))
    os.chdir(root)  # relative paths in the examples (deepspeed_configs/...) resolve as in a checkout
    rc, plan_error, plan_head = _plan(config)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cfg = load_cfg(str(config))
    except BaseException as exc:  # noqa: BLE001 - refusals of every kind are the data here
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return Load(
            False, f"{type(exc).__name__}: {first}", type(exc).__name__, plan_rc=rc, plan_error=plan_error, plan_head=plan_head
        )
    # each mode has its own folder: name it alike in both, so only real differences remain
    loaded = json.loads(json.dumps(dict(cfg), default=str, sort_keys=True).replace(str(work), "<work>"))
    return Load(True, config=loaded, plan_rc=rc, plan_error=plan_error, plan_head=plan_head)


def compare(name: str, stock: Load, patched: Load) -> Outcome:
    outcome = Outcome(name, stock, patched)
    if stock.accepted and patched.accepted:
        for key in sorted(set(stock.config) | set(patched.config)):
            a, b = stock.config.get(key), patched.config.get(key)
            if a != b:
                (outcome.documented if key in DOCUMENTED else outcome.undocumented)[key] = [a, b]
    return outcome


def documented_difference_ok(outcome: Outcome) -> list[str]:
    """Each documented difference must be exactly the documented one; returns what is not."""
    problems = []
    for key, (a, b) in outcome.documented.items():
        raw_stock, raw_patched = outcome.stock.config, outcome.patched.config
        if key == "plugins":
            if list(b or []) != [*(a or []), PLUGIN]:
                problems.append(f"plugins: {a!r} -> {b!r}")
        else:
            per_epoch = "saves_per_epoch" if key == "save_steps" else "evals_per_epoch"
            k, epochs = raw_stock.get(per_epoch), raw_stock.get("num_epochs") or 1
            derived = k and isinstance(a, float) and abs(a - 1.0 / (k * epochs)) < 1e-12
            if not (derived and b is None and raw_patched.get(per_epoch) == k):
                problems.append(f"{key}: {a!r} -> {b!r} ({per_epoch}: {k!r})")
    return problems


def _warm_up(model_dir: Path, work_root: Path) -> None:
    """One stock ``load_cfg`` in the parent: the lazy imports it triggers are then shared by every fork."""
    raw = {"base_model": "x", "datasets": [{"path": "x.jsonl", "type": "completion"}], "micro_batch_size": 1,
           "gradient_accumulation_steps": 1,  # 0.13.x wants two of micro_batch_size, gradient_accumulation_steps, batch_size
           "num_epochs": 1, "learning_rate": 1e-4, "sequence_len": 64}  # fmt: skip
    work = Path(tempfile.mkdtemp(dir=work_root))
    config = work / "config.yml"
    config.write_text(yaml.safe_dump(prepare(raw, model_dir, work, plugin=False)))
    import logging

    from axolotl.cli.config import load_cfg

    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            load_cfg(str(config))
    finally:
        logging.disable(logging.NOTSET)


def run(root: Path, work_root: Path, processes: int = 2, only: list[str] | None = None) -> list[Outcome]:
    os.environ.update(fixture.OFFLINE)
    model_dir = fixture.build(work_root / "fixture")
    import torch

    torch.set_num_threads(1)  # forked children: no intra-op thread pool inherited mid-use
    # imported once, before the forks: Axolotl, the CLI, and our patch modules (imported, not applied)
    import axolotl.cli.config  # noqa: F401
    import axolotl.core.builders.base  # noqa: F401 - what apply() imports to find its targets (2 s)

    import axolotl_savefix.cli  # noqa: F401
    import axolotl_savefix.plugin  # noqa: F401
    from axolotl_savefix import seams

    for seam in seams.SEAMS:
        seam.module()

    _warm_up(model_dir, work_root)

    configs = example_configs(root)
    if only:
        configs = [c for c in configs if any(o in str(c) for o in only)]
    tasks = [(str(c), str(root), str(model_dir), str(work_root), plugin) for c in configs for plugin in (False, True)]
    context = multiprocessing.get_context("fork")
    with context.Pool(processes, maxtasksperchild=1) as pool:
        loads = pool.map(load_one, tasks, chunksize=1)
    outcomes = []
    for i, path in enumerate(configs):
        outcome = compare(str(path.relative_to(root)), loads[2 * i], loads[2 * i + 1])
        outcomes.append(outcome)
    return outcomes


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    def refused_by(pred):
        return sorted(o.name for o in outcomes if pred(o))

    return {
        "configs": len(outcomes),
        "accepted_by_both": sum(o.stock.accepted and o.patched.accepted for o in outcomes),
        "refused_by_both": len(refused_by(lambda o: not o.stock.accepted and not o.patched.accepted)),
        "refused_by_patch_only": refused_by(lambda o: o.regression),
        "accepted_by_patch_only": refused_by(lambda o: o.patched.accepted and not o.stock.accepted),
        "undocumented_differences": {o.name: o.undocumented for o in outcomes if o.undocumented},
        "bad_documented_differences": {o.name: p for o in outcomes if (p := documented_difference_ok(o))},
        "plan_crashes": {
            f"{o.name} ({mode})": load.plan_error.strip().splitlines()[-1]
            for o in outcomes
            for mode, load in (("stock", o.stock), ("patched", o.patched))
            if load.plan_error
        },
        "plan_exit_codes": sorted({str(load.plan_rc) for o in outcomes for load in (o.stock, o.patched)}),
        "refusal_types": _count(o.stock.error_type for o in outcomes if not o.stock.accepted),
    }


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def main(argv: list[str]) -> int:
    root, out = Path(argv[0]), Path(argv[1])
    with tempfile.TemporaryDirectory(prefix="savefix-examples-") as tmp:
        outcomes = run(root, Path(tmp), only=argv[2:] or None)
    result = {"summary": summary(outcomes), "outcomes": [asdict(o) for o in outcomes]}
    out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
