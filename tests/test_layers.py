"""The package's layers, as docs/architecture.md draws them: imports point down (or sideways within
a layer) and the packages import each other in no circle. Read from the source with `ast`, so a
lazy import inside a function counts as much as one at the top."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "groupo"

# Top-level module or package of groupo -> its layer; a module may import its own layer or lower.
LAYERS = {
    "types": 0, "config": 0, "versions": 0,
    "sandbox": 1,                                  # imports nothing from groupo at all (checked below)
    "algorithms": 2, "rewards": 2,
    "data": 3, "report": 3, "distributed": 3,
    "engines": 4, "models": 4, "tools": 4,
    "rollout": 5, "judges": 5,
    "trainer": 6, "eval": 6, "plan": 6, "chat": 6, "export": 6, "smoke": 6, "config_rules": 6,
    "cli": 7, "commands": 7, "__main__": 7, "__init__": 7,
}


def _imports() -> dict[str, set[str]]:
    """Top-level unit (e.g. "engines") -> the top-level units its files import."""
    out: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        unit = path.relative_to(ROOT).parts[0].removesuffix(".py")
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        out.setdefault(unit, set()).update(
            n.split(".")[1] for n in names if n.startswith("groupo.") and n.count(".") >= 1)
    return out


def test_every_unit_has_a_layer():
    assert set(_imports()) == set(LAYERS)


def test_imports_point_down_or_sideways():
    upward = [f"{unit} ({LAYERS[unit]}) imports {other} ({LAYERS[other]})"
              for unit, others in _imports().items() for other in others if LAYERS[other] > LAYERS[unit]]
    assert upward == []


def test_the_sandbox_imports_nothing_from_groupo_but_itself():
    assert _imports()["sandbox"] <= {"sandbox"}


def test_units_import_each_other_in_no_circle():
    graph = {u: others - {u} for u, others in _imports().items()}
    done: set[str] = set()

    def visit(unit: str, path: tuple[str, ...]) -> None:
        assert unit not in path, f"import circle: {' -> '.join((*path, unit))}"
        if unit in done:
            return
        for other in sorted(graph.get(unit, ())):
            visit(other, (*path, unit))
        done.add(unit)

    for unit in sorted(graph):
        visit(unit, ())
