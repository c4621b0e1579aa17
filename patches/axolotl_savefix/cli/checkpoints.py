"""``axolotl-savefix checkpoints OUTPUT_DIR [--json]``: what a run left in ``output_dir``, and what a resume will do.

Judged by :mod:`rules.checkpoints`; what the next auto-resume sets aside, deletes (only this
package's own cut saves) and leaves, by :mod:`rules.cleanup`. Nothing is changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..rules import checkpoints, cleanup, disk


def inventory(output_dir: Path) -> dict[str, Any]:
    """Every ``checkpoint-N`` and set-aside folder of ``output_dir``: step, bytes, complete or what it lacks.

    Also which folder a resume takes (the newest complete ``checkpoint-N``) and what the next
    auto-resume would set aside, delete (provably this package's own cut saves only) and leave
    (:func:`rules.cleanup.scan`, the walk the resume itself makes). Nothing is changed here. Sizes in bytes allocated on disk
    (:func:`disk.dir_bytes`, what the free space is compared with); ``free_bytes``: ``f_bavail``.
    """
    judged = [(p, checkpoints.judge(p)) for p in checkpoints.checkpoints(output_dir)]
    found = cleanup.scan(output_dir)  # what the next auto-resume does: the seam's own walk
    plan = found.plan
    aside = [(p, checkpoints.own_cut(p)) for p in checkpoints.set_aside_folders(output_dir)]
    sizes = {p: found.sizes.get(p) or disk.dir_bytes(p) for p in [*(p for p, _ in judged), *(p for p, _ in aside)]}
    free = disk.free_bytes(output_dir)
    newest_step = checkpoints.step_of(plan.newest) if plan.newest else -1
    owns = {p: bool(j.lacks) and checkpoints.own_cut(p) for p, j in judged}
    folders = [
        {"name": p.name, "kind": "checkpoint", "step": checkpoints.step_of(p), "bytes": sizes[p], "complete": j.complete,
         "lacks": list(j.lacks), "resume": p == plan.newest, "optimizer": j.optimizer, "save_only_model": j.save_only_model,
         "own_cut": own, "older": bool(j.lacks) and (checkpoints.step_of(p) or 0) < (newest_step or 0), "notes": list(j.notes)}
        for p, j in judged
        for own in (owns[p],)
    ]  # fmt: skip
    folders += [
        {"name": p.name, "kind": "set-aside", "step": (checkpoints.set_aside_step(p) or (0, 0))[0], "bytes": sizes[p],
         "complete": False, "lacks": ["set aside by a resume: never resumed from"], "resume": False, "optimizer": None,
         "save_only_model": None, "own_cut": own, "older": False, "notes": []}
        for p, own in aside
    ]  # fmt: skip
    folders.sort(key=lambda f: (f["step"], f["kind"] == "checkpoint"))
    newest_checkpoint = judged[-1] if judged else None
    return {
        "output_dir": str(output_dir),
        "free_bytes": free,
        "folders": folders,
        "resume_from": plan.newest.name if plan.newest else None,
        "newest_incomplete": bool(newest_checkpoint and newest_checkpoint[1].lacks),
        "next_resume": {
            "set_aside": [{"name": p.name, "why": why} for p, why in plan.set_aside],
            "delete": [{"name": p.name, "why": why} for p, why in plan.delete],
            "kept": [p.name for p in plan.kept],
        },
    }


def render_inventory(report: dict[str, Any]) -> str:
    lines = [f"{report['output_dir']}: {report['free_bytes']} bytes free ({disk.human(report['free_bytes'])})"]
    if not report["folders"]:
        lines.append("  no checkpoint-N or set-aside folder")
    width = max([len(f["name"]) for f in report["folders"]] + [4])
    for f in report["folders"]:
        if f["complete"]:
            state = "complete"
            if f["optimizer"] is False and not f["save_only_model"]:
                state += " (its save wrote no optimizer state: a resume starts a fresh optimizer)"
            elif f["save_only_model"]:
                state += " (model only)"
        else:
            state = "incomplete: lacks " + "; ".join(f["lacks"])
            if f["own_cut"]:
                state += " (this package's own save, never committed)"
            if f["older"]:
                state += " (older than the checkpoint a resume takes: left as it is)"
        mark = "  <- a resume takes this one" if f["resume"] else ""
        lines.append(f"  {f['name']:<{width}}  step {f['step']:>6}  {f['bytes']:>12} bytes allocated  {state}{mark}")
        lines += [f"    note: {note}" for note in f["notes"]]
    lines.append(f"  resume: from {report['resume_from']}" if report["resume_from"] else "  resume: none (no complete checkpoint)")
    nxt = report["next_resume"]
    for d in nxt["set_aside"]:
        lines.append(f"  next auto-resume sets aside {d['name']} as incomplete-{d['name']} (a rename: nothing in it is removed)")
    for d in nxt["delete"]:
        lines.append(f"  next auto-resume deletes {d['name']}: {d['why']}")
    sizes = {f["name"]: f["bytes"] for f in report["folders"]}
    for name in nxt["kept"]:
        path = Path(report["output_dir"]) / name
        lines.append(
            f"  {name} ({sizes.get(name, 0)} bytes) is left as it is: not provably a cut save of this package; "
            f"delete it yourself once inspected (rm -r {path}) to free the space"
        )
    if report["newest_incomplete"]:
        lines.append("  the newest checkpoint-N is incomplete: stock Axolotl's resume would fail on it (exit 1)")
    return "\n".join(lines)
