"""Write docs/compatibility.md's release table from docs/compat-sweep.json (`nox -s compat` runs it).

The table is made, not typed: tests/unit/test_releases.py fails when the two disagree.
Standard library only; `python ci/compat_doc.py --check` exits 1 instead of writing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
