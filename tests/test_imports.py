"""The package's module graph: no import cycles, and no import that runs back up a floor.

Walks every module under src/trainlab with Python's own parser, collects the trainlab modules it imports
(at the top or inside functions: a deferred import is still a dependency), and fails on any cycle and on
any import from a lower wing to a higher one (docs/architecture.md draws the floors)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "trainlab"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                # `from trainlab import x` names module trainlab.x when it exists, else an attribute of trainlab
                while target and target not in modules:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walker_sees_a_planted_cycle():
    graph = import_graph()
    assert "trainlab.commands.fit" in graph["trainlab.commands.cli"]  # a deferred import inside cmd_train is seen
    graph["trainlab.train.runtime"].add("trainlab.commands.fit")  # runtime <- build <- run <- fit <- runtime
    assert find_cycle(graph) is not None


# The floors, top down. A module may import its own wing and any wing on a lower floor; wings that share a
# floor import each other only where SIDEWAYS says so, and why (and so does the one import that goes up).
FLOORS = [
    ["trainlab", "__main__"],  # the package's face: lazy re-exports
    ["commands"],  # entry points: argv or a Python call -> the library
    ["doctor"],  # examines the run train builds (and runs its step); its start checks are a callback
    ["train"],  # one run: the loop, the step, building its parts
    ["state", "runlog", "data", "models", "watch", "report"],
    ["config", "errors", "paths", "distributed", "rng", "user"],  # the ground floor
]
SIDEWAYS = {  # (importing wing, imported module or wing): why
    ("models", "state.checkpoint"): "pretrained weights load through the checkpoint's safe loader",
    ("runlog", "report"): "the trackers keep the HTML report of a finished run as a file",
    ("report", "state.lock"): "a run is running while its run-dir lock is held (trainlab runs, the report)",
    ("config", "watch.settings"): "the watch section's schema lives with the watch, usable without trainlab's config",
}


def wing(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def floor_of(module: str) -> int:
    return next(i for i, names in enumerate(FLOORS) if wing(module) in names)


def declared(module: str, target: str) -> bool:
    inside = target.split(".", 1)[1] if "." in target else target
    return any(wing(module) == a and (inside == b or inside.startswith(b + ".")) for a, b in SIDEWAYS)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher floor, or of another wing of the same floor that SIDEWAYS does not declare
    (the ground floor's single modules may import each other: the cycle test keeps them apart)."""
    ground = len(FLOORS) - 1
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if wing(module) != wing(target) and not declared(module, target)
        and (floor_of(target) < floor_of(module) or floor_of(target) == floor_of(module) != ground)
    )


def test_every_module_sits_on_a_floor():
    assert [m for m in import_graph() if not any(wing(m) in names for names in FLOORS)] == []


def test_no_import_runs_back_up_a_floor():
    assert upward_imports(import_graph()) == []


def test_the_layering_check_sees_a_planted_upward_import():
    graph = import_graph()
    graph["trainlab.state.checkpoint"].add("trainlab.train.run")  # state sits below train
    graph["trainlab.data.shapes"].add("trainlab.watch.watcher")  # two wings of one floor, not declared
    assert upward_imports(graph) == ["trainlab.data.shapes -> trainlab.watch.watcher",
                                     "trainlab.state.checkpoint -> trainlab.train.run"]
