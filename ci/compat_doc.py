"""Write docs/compatibility.md's release tables from docs/compat-sweep.json (`nox -s compat` runs it).

The table is made, not typed: tests/unit/test_releases.py fails when the two disagree.
Standard library only; `python ci/compat_doc.py --check` exits 1 instead of writing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # loaded by path (tests/unit/test_releases.py) as well as run as a script
    sys.path.insert(0, str(HERE))
from compat_cases import CASES  # noqa: E402

ROOT = HERE.parent
SWEEP = ROOT / "docs" / "compat-sweep.json"
DOC = ROOT / "docs" / "compatibility.md"
BEGIN = "<!-- compat-sweep: made by ci/compat_doc.py from docs/compat-sweep.json; do not edit -->"
END = "<!-- /compat-sweep -->"


def _steps(run: dict | None) -> str:
    if not run:
        return "not run"
    return f"{len(run['saved'])} saved, {len(run['kept'])} kept"


def _list(steps: list[int]) -> str:
    return " ".join(map(str, steps)) or "none"


def _source(version: str, entry: dict) -> str:
    source = entry.get("corpus_from", version)
    return "" if source == version else f" ({source}'s examples: {version}'s sdist has none)"


NOT_IN_SWEEP = "not run in this sweep"  # an entry written before the sweep ran the cases


def outcome_mark(outcome: str) -> str:
    """One recorded outcome (ci/compat_cases.py's ``case_outcomes``) as a table cell's text, pipes escaped.

    ``passed``: ✅; ``failed``: ❌; ``skipped: <reason>`` and ``not run`` as they are.
    """
    text = {"passed": "✅", "failed": "❌"}.get(outcome, outcome)
    return " ".join(text.split()).replace("|", "\\|")


def case_cell(case: dict[str, str] | None) -> str:
    """One release's outcome of one case: the patched test's mark, then ``stock: <mark>`` where the case has one.

    ``case``: ``{"patched": outcome, "stock": outcome}`` (stock optional); None: the entry has no
    outcome for this case (an older sweep), shown as "not run in this sweep".
    """
    if case is None:
        return NOT_IN_SWEEP
    cell = outcome_mark(case.get("patched", "not run"))
    if "stock" in case:
        cell += f" · stock: {outcome_mark(case['stock'])}"
    return cell


def render_cases(sweep: dict) -> list[str]:
    """The second table: one row per release, one column per case (ci/compat_cases.py, then any older names)."""
    names = list(CASES)
    for entry in sweep.values():
        names += [name for name in entry.get("cases", {}) if name not in names]
    lines = [
        "One real run per patch, per release (patched test; stock test beside, which passes while stock behaves as "
        'recorded: the defect the patch removes; for "resume in epoch 2", the defect before Transformers 5.0 and a '
        "match from 5.0, where stock has no defect there; for the token counters, counters restarted at the resume up "
        "to 0.19.0 and a match from 0.20.0, which fixed Axolotl issue 3940):",
        "",
        "| Axolotl | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for version, entry in sweep.items():
        cases = entry.get("cases")
        cells = [case_cell(cases.get(name) if cases is not None else None) for name in names]
        lines.append(f"| {version} | " + " | ".join(cells) + " |")
    return lines


def render(sweep: dict) -> str:
    lines = [
        BEGIN,
        "",
        "| Axolotl | Python | Transformers | torch | stock, reported case | patched, reported case | "
        "e2e and seam tests | example corpus: configs / accepted by both / refused by the fix only | result | "
        "time: env + tests + corpus | run on |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for version, e in sweep.items():
        runs = e.get("runs", {})
        c, t = e["corpus"], e["seconds"]
        lines.append(
            f"| {version} | {e['python']} | {e['transformers']} | {e['torch']} | {_steps(runs.get('reported-stock'))} | "
            f"{_steps(runs.get('reported-patched'))} | {e['tests'][0]}/{e['tests'][1]} passed | "
            f"{c['configs']} / {c['accepted_by_both']} / {c['refused_by_patch_only']}{_source(version, e)} | "
            f"**{e['result']}** | "
            f"{t['env']:.0f} + {t['tests']:.0f} + {t['corpus']:.0f} s | {e['date']} |"
        )
    lines += ["", "Checkpoint steps of the reported case (saved; kept on disk):", ""]
    groups: dict[str, list[str]] = {}  # the same steps on several releases: one line, those releases named
    for version, e in sweep.items():
        runs = e.get("runs", {})
        steps = []
        for variant in ("stock", "patched"):
            run = runs.get(f"reported-{variant}")
            if run:
                steps.append(f"{variant}: saved {_list(run['saved'])}; kept {_list(run['kept'])}")
        groups.setdefault(" · ".join(steps) or "not run", []).append(version)
    for steps, versions in groups.items():
        lines.append(f"- {', '.join(versions)}: {steps}")
    lines += ["", *render_cases(sweep)]
    failed = {v: e["failed"] for v, e in sweep.items() if e["failed"]}
    if failed:
        lines += ["", "Failed:", ""] + [f"- {v}: {', '.join(f)}" for v, f in failed.items()]
    return "\n".join([*lines, "", END])


def updated(doc: str, sweep: dict) -> str:
    table = render(sweep)
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + table + tail
    return doc.rstrip("\n") + "\n\n" + table + "\n"


def main(argv: list[str]) -> int:
    sweep = json.loads(SWEEP.read_text())
    doc = DOC.read_text()
    new = updated(doc, sweep)
    if "--check" in argv:
        if new != doc:
            print(f"{DOC} is not what {SWEEP} says: run python ci/compat_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote the release table of {DOC.relative_to(ROOT)} from {SWEEP.relative_to(ROOT)} ({len(sweep)} releases)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
