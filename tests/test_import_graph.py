"""The package's imports go one way: no module reaches itself through its imports.

Every import counts, the ones inside functions too: a function-local import that closes a
circle still ties the two modules together, it only hides the knot until run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import localcascade

PACKAGE_DIR = Path(localcascade.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (``from pkg import submodule`` names the submodule),
    with the packages above each: importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first,
    so a package ``__init__`` that imports its own modules is in a circle with any of them that
    imports a sibling."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in known else source)
    with_packages = {".".join(t.split(".")[:i]) for t in found for i in range(1, t.count(".") + 2)}
    return {target for target in with_packages if target in known and target != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "localcascade.engine.session" in graph and "localcascade.cli.ask" in graph
    assert graph["localcascade.engine.session"], "the session imports package modules; the parser missed them"


def test_importing_a_module_imports_the_packages_above_it(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg import a\n")
    (package / "a.py").write_text("from pkg.b import x\n")
    (package / "b.py").write_text("x = 1\n")
    known = {"pkg", "pkg.a", "pkg.b"}
    assert _imports("pkg.a", package / "a.py", known) == {"pkg", "pkg.b"}
    assert cycles({n: _imports(n, package / (n.split(".")[-1] + ".py" if "." in n else "__init__.py"), known)
                   for n in known}) == [["pkg", "pkg.a"]]


def test_a_circle_is_found_when_there_is_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_module_imports_itself_round_a_circle():
    found = cycles(import_graph())
    assert not found, "import circles (each group reaches itself): " + "; ".join(" <-> ".join(g) for g in found)


# -- Which way imports go (ARCHITECTURE.md states the same table) ---------------------------------

BASE = ("localcascade", "localcascade.errors", "localcascade.units", "localcascade.settings",
        "localcascade.safe_io", "localcascade.stderr")
PURE_FACTS = ("localcascade.model.facts", "localcascade.model.hparams", "localcascade.model.spec",
              "localcascade.hardware.facts")
FRONT_ENDS = ("localcascade.cli", "localcascade.repl", "localcascade.server")

# A module under the key may import only modules under these prefixes (and its own package).
ALLOWED: dict[str, tuple[str, ...]] = {
    # The pure planning layer: facts in, a Plan out; no I/O, no llama_cpp, no settings.
    "localcascade.planning": ("localcascade", "localcascade.errors", "localcascade.units", *PURE_FACTS),
    # What a model file is; its one reach outward is reading a header from the hub (by range requests).
    "localcascade.model": BASE,
    "localcascade.model.gguf_header": (*BASE, "localcascade.hub.ranges", "localcascade.hub.errors"),
    "localcascade.hardware": BASE,
    # The edge to Hugging Face knows models only by name, and records what it verified in the store's index.
    "localcascade.hub": (*BASE, "localcascade.model.spec", "localcascade.store.index"),
    # What is on disk: models in the HF cache (scanned through hub.hf_compat) and the index.
    "localcascade.store": (*BASE, "localcascade.model.spec", "localcascade.model.catalog", "localcascade.hub.hf_compat"),
    # The I/O side of choosing a model and its plan, and the one way a command loads it.
    "localcascade.resolve": (*BASE, "localcascade.model", "localcascade.planning", "localcascade.hub",
                             "localcascade.store", "localcascade.hardware", "localcascade.engine.session"),
    # The engine runs a Plan: no hub, no store, no resolver, no front end.
    "localcascade.engine": (*BASE, "localcascade.model", "localcascade.planning"),
    "localcascade.tools": (*BASE, "localcascade.engine"),
    "localcascade.server": (*BASE, "localcascade.engine", "localcascade.tools",
                            "localcascade.model", "localcascade.planning"),
}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _rule_for(module: str) -> tuple[str, tuple[str, ...]] | None:
    keys = [k for k in ALLOWED if _under(module, k)]
    if not keys:
        return None
    key = max(keys, key=len)
    return key, ALLOWED[key]


def direction_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        rule = _rule_for(module)
        for target in sorted(targets):
            if rule is not None:
                key, allowed = rule
                package = ".".join(key.split(".")[:2])
                # a package's __init__ runs before any module in it: allowed with the module
                if not (_under(target, package) or any(target == a or (a != "localcascade" and _under(target, a))
                                                       or _under(a, target) for a in allowed)):
                    found.append(f"{module} -> {target}")
                    continue
            if any(_under(target, f) for f in FRONT_ENDS) and not any(_under(module, f) for f in FRONT_ENDS):
                if module != "localcascade.__main__":
                    found.append(f"{module} -> {target} (only front ends import front ends)")
    return found


def test_imports_go_the_way_the_architecture_states():
    found = direction_violations(import_graph())
    assert not found, "imports against ARCHITECTURE.md's direction rules: " + "; ".join(found)


def test_a_facts_module_reaching_into_the_planner_is_caught():
    # The rule that was broken before the facts moved out of the memory model: the catalog (facts)
    # imported ModelFacts from the memory model (planning).
    graph = {"localcascade.model.catalog": {"localcascade.planning.memory"},
             "localcascade.planning.memory": {"localcascade.model.facts"},
             "localcascade.engine.session": {"localcascade.store.models"},
             "localcascade.engine.loader": {"localcascade.cli.console"}}
    assert direction_violations(graph) == [
        "localcascade.engine.loader -> localcascade.cli.console",
        "localcascade.engine.session -> localcascade.store.models",
        "localcascade.model.catalog -> localcascade.planning.memory",
    ]


def test_the_package_root_holds_few_modules():
    root = sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(root) <= 8, f"{len(root)} modules at the package root ({', '.join(root)}): each belongs to a part"
