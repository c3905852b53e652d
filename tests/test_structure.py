"""The shape of the code: no import cycles between modules (function-level imports count), no module or
function far past its size limit, every docs/ file a source comment names exists, and ``import
unet_patches`` loads the inference side only."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "unet_patches"
# The sizes past which the structure gauge (shared/tools/structure.py) fails: a module or function that
# long is doing more than one job.
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 70


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            submodules = {f"{target}.{alias.name}" for alias in node.names} & modules.keys()
            found |= submodules or ({target} & modules.keys())
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & modules.keys()
    return found - {name}


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}

    def reachable(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for nxt in graph[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    def related(a: str, b: str) -> bool:  # a package and its own submodules may import each other
        return a.startswith(b + ".") or b.startswith(a + ".")

    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in reachable(a) if a in reachable(b)
                     and a != b and not related(a, b)})  # fmt: skip
    assert not cycles, cycles


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def test_every_doc_a_source_file_names_exists():
    missing = [f"{path.relative_to(REPO)}: {ref}" for path in PACKAGE.rglob("*.py")
               for ref in set(re.findall(r"docs/[A-Za-z0-9_\-]+\.md", path.read_text()))
               if not (REPO / ref).is_file()]  # fmt: skip
    assert not missing, missing


def test_importing_the_package_loads_no_training_code():
    code = (
        "import sys, unet_patches; "
        "print(sorted(m for m in sys.modules if m.startswith(('unet_patches.training', 'unet_patches.cli', "
        "'torch.utils.tensorboard', 'tensorboard'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]", result.stdout
