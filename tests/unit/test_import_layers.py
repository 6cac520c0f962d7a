"""tasker's imports flow one way: no cycle, and the layers as declared.

Every module under ``tasker/`` is parsed (never imported) and every import
statement counts: at module level, inside functions and classes, under
``if TYPE_CHECKING``. A function-local import hides an arrow from a reader but
not from this test. Relative imports are resolved, and ``from tasker import x``
is an arrow to ``tasker.x`` when ``x`` is a module (else to the package).

The layers, bottom to top (an arrow points down or sideways, never up):

1. foundations: settings, headers, errors, redact, periodic_queue (and
   ``tasker.metrics.directory``, standard library only, which settings uses to
   check the configured directory);
2. the parts without Celery wiring: ``tasker.sampler`` (no metrics recording,
   no Celery app), the metrics core (definitions, values, node_state, store,
   node, server), db, workflow records and definitions, the handler registry;
3. Celery-facing modules: signal receivers (``metrics.recording``,
   ``metrics.pool_processes``, correlation, tracing, schedule_monitor),
   bootsteps (``metrics.bootstep``, receipt, periodic, flower_rows, ...) and
   tasks. They get the app from Celery (``worker.app``, ``consumer.app``,
   ``sender.app``, ``self.app``), never by importing it;
4. ``tasker.celery_app``: creates the app and connects layer 3 to it, and
   ``@handler`` (a task of that app);
5. ``tasker`` (the package): ``celery -A tasker`` finds the app there;
6. what only Celery or a command loads by name: the task modules of the
   ``imports`` setting (``tasker.workflows.engine`` is one: its ``submit()``
   publishes with the package's app when given none; its tasks use
   ``self.app``), and ``tasker.cli`` (the commands, the demo's private servers).

Checked here: no cycle at all; the app imported only from layers 5 and 6; the
foundations importing only each other; the sampler importing no recording, no
app and no task; the demo's servers imported only by ``tasker.cli``.
"""

from __future__ import annotations

import ast
import collections
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "tasker"

#: The bottom layer, and what it may import besides itself.
FOUNDATIONS = ("tasker.settings", "tasker.headers", "tasker.errors", "tasker.redact",
               "tasker.periodic_queue")
FOUNDATIONS_MAY_IMPORT = ("tasker.metrics.directory",)
#: Where the demo's private Redis/PostgreSQL servers live, and who may import them.
DEV_SERVERS = "tasker.cli.embedded_services"
#: Modules the pure sampler must never import.
NOT_FOR_THE_SAMPLER = ("tasker.metrics.recording", "tasker.celery_app", "tasker.tasks")

#: Arrows still to be removed by the owner of the importing module (each says
#: how). They are left out of every check, cycles included; an entry whose
#: arrow is gone fails :func:`test_pending_arrows_still_exist`, so the list
#: only shrinks. Add nothing here.
PENDING_ARROWS: dict[tuple[str, str], str] = {
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _known(name: str) -> str | None:
    """``name`` if it is a tasker module, else its longest prefix that is one."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "tasker" or alias.name.startswith("tasker."):
                found = _known(alias.name)
                if found:
                    yield found
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    if not (base == "tasker" or base.startswith("tasker.")):
        return
    for alias in node.names:
        found = _known(f"{base}.{alias.name}")
        if found == f"{base}.{alias.name}":
            yield found  # a module
        elif _known(base):
            yield _known(base)  # type: ignore[misc] - a name defined in ``base``


def task_modules() -> list[str]:
    """The modules Celery imports by name: the strings of ``imports`` in celeryconfig."""
    tree = ast.parse(MODULES["tasker.celeryconfig"].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "imports" for t in node.targets):
            return [e.value for e in ast.walk(node.value)
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    raise AssertionError("tasker/celeryconfig.py sets no imports")


def import_graph(pending: bool = False) -> dict[str, dict[str, int]]:
    """module -> {imported tasker module: line of the first such import}.

    Args:
        pending: keep the arrows of :data:`PENDING_ARROWS` (left out by default).
    """
    graph: dict[str, dict[str, int]] = {name: {} for name in MODULES}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, path, node):
                    if target != module and (pending or (module, target) not in PENDING_ARROWS):
                        graph[module].setdefault(target, node.lineno)
    return graph


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return groups


def _one_cycle(graph: dict[str, dict[str, int]], group: list[str]) -> list[str]:
    """A shortest cycle through the group's first module, as ``a -> b -> a``."""
    members = set(group)
    start = group[0]
    came_from: dict[str, str] = {}
    queue = collections.deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    return group  # pragma: no cover - a strongly connected group always has a cycle


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)
    ) + f" -> {cycle[-1]}"


def _within(module: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _breaks(rule: str, arrows: list[tuple[str, str, int]]) -> list[str]:
    return [f"{rule}: {a} imports {b} (line {line})" for a, b, line in arrows]


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "tasker.celery_app" in graph["tasker"]
    assert "tasker.metrics.bootstep" in graph["tasker.celery_app"]


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycles = [f"{_describe(graph, _one_cycle(graph, group))}\n  (all of {', '.join(group)}"
              " reach each other)" for group in _strongly_connected(graph)]
    assert not cycles, "import cycles in tasker/ (counting function-local imports):\n" + \
        "\n".join(cycles)


def test_a_cycle_is_reported() -> None:
    graph = {"a": {"b": 3}, "b": {"c": 5}, "c": {"a": 7}, "d": {"a": 1}}
    groups = _strongly_connected(graph)
    assert groups == [["a", "b", "c"]]
    assert _describe(graph, _one_cycle(graph, groups[0])) == \
        "a (line 3) -> b (line 5) -> c (line 7) -> a"


def test_pending_arrows_still_exist() -> None:
    graph = import_graph(pending=True)
    gone = [f"{a} -> {b}" for a, b in PENDING_ARROWS if b not in graph.get(a, {})]
    assert not gone, "remove from PENDING_ARROWS (the arrow is gone): " + ", ".join(gone)


def test_only_the_package_and_the_commands_import_the_app() -> None:
    graph = import_graph()
    arrows = [(a, b, line) for a, targets in graph.items() for b, line in targets.items()
              if b == "tasker.celery_app" and not (a == "tasker" or _within(a, "tasker.cli"))]
    # Below the package nothing imports the package itself (that is the app, too);
    # the task modules Celery loads by name sit above it, as handler modules do.
    above = ("tasker.cli", *task_modules())
    arrows += [(a, b, line) for a, targets in graph.items() for b, line in targets.items()
               if b == "tasker" and not _within(a, above)]
    breaks = _breaks("the app is imported only by tasker/__init__ and tasker.cli", arrows)
    assert not breaks, "\n".join(breaks)


def test_the_foundations_import_nothing_above_them() -> None:
    graph = import_graph()
    arrows = [(a, b, line) for a, targets in graph.items() if a in FOUNDATIONS
              for b, line in targets.items() if b not in FOUNDATIONS + FOUNDATIONS_MAY_IMPORT]
    arrows += [(a, b, line) for a in FOUNDATIONS_MAY_IMPORT for b, line in graph[a].items()]
    breaks = _breaks("the foundations import only each other", arrows)
    assert not breaks, "\n".join(breaks)


def test_the_sampler_is_pure() -> None:
    graph = import_graph()
    arrows = [(a, b, line) for a, targets in graph.items() if _within(a, "tasker.sampler")
              for b, line in targets.items() if _within(b, NOT_FOR_THE_SAMPLER)]
    breaks = _breaks("tasker.sampler records no metrics and knows no Celery app", arrows)
    assert not breaks, "\n".join(breaks)


def test_the_dev_servers_are_out_of_the_runtime() -> None:
    graph = import_graph()
    assert DEV_SERVERS in MODULES
    arrows = [(a, b, line) for a, targets in graph.items() for b, line in targets.items()
              if b == DEV_SERVERS and not _within(a, "tasker.cli")]
    breaks = _breaks("only tasker.cli imports the demo's servers", arrows)
    assert not breaks, "\n".join(breaks)
    assert "tasker.embedded" not in MODULES
