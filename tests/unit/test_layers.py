"""Issue 38: the package's layers as tests. ``rules`` is pure; seams never import each other; the CLI stands on rules and infra.

rules/   the schedule, plan, disk rule, checkpoints, the resume decision, run matching, config checks, keys
_infra/  patching and undo, the table of targets, one wrapper per target, logging, collectives, signals, journal
seams/   one module per fix (seams.SEAMS)
cli/     the commands
"""

import ast
import subprocess
import sys
from pathlib import Path

import axolotl_savefix

PACKAGE = Path(axolotl_savefix.__file__).parent
HEAVY = ("axolotl", "transformers", "torch", "accelerate", "peft", "trl", "datasets")


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, as an absolute name (relative imports resolved against the package)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{alias.name}" for alias in node.names]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "axolotl_savefix" else None


def test_rules_and_the_cli_import_with_axolotl_transformers_and_torch_blocked():
    blocked = ", ".join(repr(name) for name in HEAVY)
    code = (
        "import importlib, pkgutil, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in ({blocked},):\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import axolotl_savefix.rules as rules\n"
        "for info in pkgutil.iter_modules(rules.__path__):\n"
        "    importlib.import_module(f'axolotl_savefix.rules.{info.name}')\n"
        "import axolotl_savefix, axolotl_savefix.cli\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_rules_import_only_rules_the_standard_library_and_pydantic():
    for path in sorted((PACKAGE / "rules").glob("*.py")):
        for module in _imports(path):
            layer = _layer(module)
            assert layer in (None, "rules"), f"{path.name} imports {module}"
            assert module.split(".")[0] not in HEAVY, f"{path.name} imports {module}"


def test_no_seam_imports_another_and_infra_imports_no_seam():
    seams = sorted((PACKAGE / "seams").glob("*.py"))
    assert len(seams) >= 10  # the table and nine seams
    for path in seams:
        if path.name == "__init__.py":
            continue
        for module in _imports(path):
            assert not module.startswith("axolotl_savefix.seams"), f"seams/{path.name} imports {module}"
            assert _layer(module) in (None, "rules", "_infra"), f"seams/{path.name} imports {module}"
    for path in sorted((PACKAGE / "_infra").glob("*.py")):
        for module in _imports(path):
            assert _layer(module) in (None, "rules", "_infra"), f"_infra/{path.name} imports {module}"


def test_the_cli_imports_only_rules_and_infra_and_axolotl_lazily():
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        for module in _imports(path):
            assert _layer(module) in (None, "rules", "_infra", "cli"), f"cli/{path.name} imports {module}"
        for node in top:  # Axolotl and its stack only inside functions (plan, lazily)
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] in HEAVY for n in names), f"cli/{path.name} imports {names} at import time"


def test_every_seam_in_the_table_has_a_module_with_its_name_and_an_install():
    from axolotl_savefix import seams

    files = {p.stem for p in (PACKAGE / "seams").glob("*.py")} - {"__init__"}
    assert files == set(seams.NAMES)
    for name in seams.NAMES:
        source = (PACKAGE / "seams" / f"{name}.py").read_text()
        assert f'NAME = "{name}"' in source and "def install() -> None:" in source
