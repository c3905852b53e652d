"""The layer rule of docs/DESIGN.md, checked: a room (a package, or the shared basics at the top)
imports only from itself and from the rooms of lower layers. Every import counts, those inside
functions and under ``TYPE_CHECKING`` too."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "unet_patches"

LAYERS = (
    ("basics", "metrics"),  # the modules directly in unet_patches/ that import nothing of the rooms; the figures
    ("data",),
    ("models", "losses"),
    ("files",),
    ("inference",),
    ("training",),
    ("deploy",),
    ("cli",),  # the command line
    ("front",),  # the package face, api.py, demo.py, moved.py, __main__.py
)
FRONT = {"unet_patches", "unet_patches.api", "unet_patches.demo", "unet_patches.moved", "unet_patches.__main__"}
BASICS = {"errors", "validate", "atomic", "registry", "console", "parameters", "runtime", "_version"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def room(module: str) -> str:
    """The room of a module: its package below unet_patches, ``basics`` or ``front``."""
    if module in FRONT:
        return "front"
    parts = module.split(".")
    if len(parts) == 2 and not (PACKAGE / parts[1]).is_dir():
        assert parts[1] in BASICS, f"{module}: a module directly in unet_patches/ is neither a basic nor a front door"
        return "basics"
    return parts[1]


def layer(name: str) -> int:
    return next(i for i, rooms in enumerate(LAYERS) if name in rooms)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
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


def test_every_room_has_a_layer():
    rooms = {room(name) for name in _modules()}
    assert rooms == {r for rooms_ in LAYERS for r in rooms_}, rooms


def test_rooms_import_only_from_themselves_and_lower_layers():
    modules = _modules()
    wrong = []
    for name, path in sorted(modules.items()):
        own = room(name)
        for target in sorted(_imports(name, path, modules)):
            other = room(target)
            if other != own and layer(other) >= layer(own):
                wrong.append(f"{name} ({own}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_the_package_face_holds_about_a_dozen_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 15, top


def test_design_names_every_module():
    """docs/DESIGN.md says which room holds what: every module is named there."""
    design = (REPO / "docs" / "DESIGN.md").read_text()
    missing = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and f"{p.name}`" not in design
    ]
    assert not missing, missing
