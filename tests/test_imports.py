"""The house's import rules: no cycles between the project's modules, and layers that point one way:
``miniworld`` -> ``harness`` -> ``methods`` -> ``clipcore``, with ``bounds`` standing alone.

Every ``import`` statement counts, at module level or inside a function: a lazy import is still a
dependency. Plugins (``clipcore.plugins``) are found through entry points, not imports, so the
harness never depends on the miniature world.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("bounds", "clipcore", "harness", "methods", "miniworld")


def project_modules() -> dict[str, str]:
    """{module name: file} for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: str, modules: dict) -> set[str]:
    """The project modules ``module`` imports (``from a import b`` counts as a.b when that is a module)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    is_package = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [
                f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:  # a.b.function -> a.b
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph():
    modules = project_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_real_imports(graph):
    # A parser that found nothing would make the rules below pass vacuously.
    assert "clipcore.backbone" in graph["methods.coop"] and "methods.parts.base" in graph["methods.coop"]
    assert "clipcore.paths" in graph["clipcore.backbone"]  # an import inside a function
    assert "methods" in graph["harness.runner"] and "harness.checkpoint" in graph["harness.runner"]
    assert "harness.data.splitfile" in graph["harness.data.readers"]  # a relative import
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def package_of(module: str) -> str:
    return module.split(".")[0]


def test_methods_never_import_the_harness(graph):
    # The harness builds and runs methods; what methods need from below (the backbone, checkpoint files,
    # atomic writes, plugins, the cache folder) is the base layer's.
    methods = [m for m in graph if package_of(m) == "methods"]
    assert "methods.coop" in methods and "methods.parts.registry" in methods
    for module in methods:
        outside = {d for d in graph[module] if package_of(d) not in ("methods", "clipcore", "bounds")}
        assert not outside, f"{module} imports {sorted(outside)}: move what it needs into clipcore"


def test_the_base_layer_imports_neither_the_harness_nor_the_methods(graph):
    base = [m for m in graph if package_of(m) == "clipcore"]
    assert "clipcore.backbone" in base and "clipcore.checkpoint_file" in base
    for module in base:
        above = {d for d in graph[module] if package_of(d) not in ("clipcore", "bounds")}
        assert not above, f"{module} imports {sorted(above)}: the base layer sits beneath the harness and the methods"


def test_the_backbone_keeps_its_old_name():
    # ``harness.backbone`` is public API: the same module, so a backbone registered through either name
    # is seen through the other.
    import clipcore.backbone
    import harness.backbone

    assert harness.backbone is clipcore.backbone
    from harness.backbone import register_backbone

    assert register_backbone is clipcore.backbone.register_backbone


def test_the_methods_folder_lists_the_methods():
    # Every module of ``methods/`` registers a method; what methods are built from lives in a
    # sub-package, which discovery skips.
    import methods

    folder = os.path.join(ROOT, "methods")
    modules = {n[:-3] for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_")}
    packages = {n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n, "__init__.py"))}
    registered = {cls.__module__ for cls in methods.METHODS.values()}
    assert packages == {"parts"}
    assert {f"methods.{m}" for m in modules} <= registered, sorted({f"methods.{m}" for m in modules} - registered)
    assert not {m for m in registered if m.startswith("methods.parts")}


def test_the_declarations_of_allowed_values_stand_alone(graph):
    # The harness and the methods both read them: they import nothing of either (nor anything heavy).
    assert "bounds" in graph["harness.config"] and "bounds" in graph["methods.parts.base"]
    assert graph["bounds"] == set()
    code = "import sys, bounds; print(sorted({'torch', 'numpy', 'yaml'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_harness_never_imports_the_miniature_world(graph):
    for module, deps in graph.items():
        if module.startswith("harness"):
            assert not {d for d in deps if d.startswith("miniworld")}, module


def test_the_launchers_executors_stand_alone(graph):
    # One executor per file: local, debug and Slurm share the job state and the submitit job, never
    # each other; and no module of the package imports the package, whose __init__ only gathers them.
    executors = {"harness.launcher.local", "harness.launcher.debug", "harness.launcher.slurm"}
    assert executors <= set(graph) and "harness.launcher.state" in graph["harness.launcher.local"]
    for module in executors:
        assert not graph[module] & (executors - {module}), f"{module} imports {sorted(graph[module] & executors)}"
    for module, deps in graph.items():
        if module.startswith("harness.launcher."):
            assert "harness.launcher" not in deps, module


def test_sweep_bookkeeping_does_not_import_the_runner(tmp_path):
    # Planning a sweep, checking what exists and reporting status needs no runner (nor its torch work).
    code = (
        "import sys; from harness import sweep, launcher; "
        "jobs = sweep.expand(sweep.load_experiment('base2new'), '/data', sys.argv[1]); "
        "launcher.plan(jobs); launcher.status(jobs, sys.argv[1], 'base2new'); "
        "print('harness.runner' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_the_report_keeps_a_papers_pieces_apart(graph):
    # Tables and figures of every method read the registry; only the list of tables (builders) and the
    # few-shot figure's order reach into a paper's module, never the shared vocabulary beneath them.
    papers = {m for m in graph if m.startswith("harness.report.paper.")}
    assert {"harness.report.paper.cocoop", "harness.report.paper.coop"} <= papers
    for module in ("harness.report.tables", "harness.report.figures", "harness.report.gate", "harness.report.render"):
        assert not graph[module] & papers, f"{module} imports {sorted(graph[module] & papers)}"
