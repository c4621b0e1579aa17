"""Axolotl's own example configs: every one that stock accepts, the plugin accepts, and changes only as documented.

Collected only by ``nox -s examples`` (and ``compat``), which passes this file by name (its
name matches neither ``test_*.py`` nor ``*_test.py``, so ``nox -s tests`` leaves it out) and downloads the
Axolotl sdist of the installed release and passes its root in
``SAVEFIX_EXAMPLES_ROOT``. See :mod:`corpus` for how each config is loaded.
"""

import json
import os
from dataclasses import asdict
from pathlib import Path

import corpus
import pytest


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = os.environ.get("SAVEFIX_EXAMPLES_ROOT")
    if not root:
        pytest.fail("SAVEFIX_EXAMPLES_ROOT is not set: run `nox -s examples`, which downloads Axolotl's sdist")
    found = corpus.run(Path(root), tmp_path_factory.mktemp("examples"))
    report = os.environ.get("SAVEFIX_EXAMPLES_REPORT")
    if report:
        summary = corpus.summary(found)
        Path(report).write_text(json.dumps({"summary": summary, "outcomes": [asdict(o) for o in found]}, indent=1))
        print(json.dumps({k: v for k, v in summary.items() if k != "undocumented_differences"}, indent=1))
    return found


def test_the_corpus_is_real(outcomes):
    """Hundreds of configs, most of them loadable here: a corpus that silently shrank would prove nothing."""
    assert len(outcomes) >= 100
    assert sum(o.stock.accepted for o in outcomes) >= len(outcomes) // 2


def test_every_config_stock_accepts_the_plugin_accepts(outcomes):
    refused = {o.name: o.patched.error for o in outcomes if o.regression}
    assert refused == {}


def test_loaded_configs_differ_only_as_documented(outcomes):
    assert {o.name: o.undocumented for o in outcomes if o.undocumented} == {}
    assert {o.name: p for o in outcomes if (p := corpus.documented_difference_ok(o))} == {}


def test_per_epoch_ratios_are_gone_where_stock_derives_them(outcomes):
    """The one intended difference is really there: stock's float ratio, patched none."""
    derived = [o for o in outcomes if "save_steps" in o.documented or "eval_steps" in o.documented]
    assert derived, "no example derives a ratio from saves_per_epoch/evals_per_epoch: the comparison tests nothing"
    for o in derived:
        for key in ("save_steps", "eval_steps"):
            if key in o.documented:
                stock, patched = o.documented[key]
                assert 0 < stock < 1 and patched is None


def test_plan_prints_a_plan_for_every_config(outcomes):
    for o in outcomes:
        for mode, load in (("stock", o.stock), ("patched", o.patched)):
            assert not load.plan_error, f"{o.name} ({mode}): plan crashed:\n{load.plan_error}"
            if o.patched.accepted:
                assert load.plan_rc in (0, 1), f"{o.name} ({mode}): plan exit {load.plan_rc}: {load.plan_head}"
                assert load.plan_head.startswith("checkpoint plan for "), f"{o.name} ({mode}): {load.plan_head}"
            else:  # refused by the patched load_cfg too: the plan may refuse it, saying why (exit 2)
                assert load.plan_rc in (0, 1, 2), f"{o.name} ({mode}): plan exit {load.plan_rc}"
