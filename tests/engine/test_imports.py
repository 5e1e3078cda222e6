"""engine/'s imports run only downward: no cycle between its packages (vmx, io, cpu, mmu, core, ...), nor between modules.

The graph comes from the syntax trees of engine/'s files: a node per package below engine/ (engine.vmx,
engine.io, ...) and per module at engine/'s top (engine.stats, engine.native, ...); an edge for every import
of another one. A package's __init__.py importing its own modules is inside the package and draws nothing.
"""
import ast
import pathlib

ENGINE = pathlib.Path(__file__).resolve().parents[2] / "engine"


def module_name(path):
    parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ENGINE.rglob("*.py")}


def imports(name):
    """The engine modules `name` imports (a `from package import x` names module package.x when there is one)."""
    path = MODULES[name]
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            base = here.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(part for part in (base, node.module) if part)
            for alias in node.names:
                found.add(target + "." + alias.name if target + "." + alias.name in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


def package_of(name):
    """engine.vmx.hooks → engine.vmx; a module at engine/'s top is its own node."""
    return ".".join(name.split(".")[:2])


def graph(node_of):
    edges = {}
    for name in MODULES:
        for target in imports(name):
            if node_of(name) != node_of(target):
                edges.setdefault(node_of(name), set()).add(node_of(target))
    return edges


def cycles(edges):
    """Strongly connected components of more than one node (Tarjan's algorithm)."""
    index, low, stack, found = {}, {}, [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def why(component, node_of):
    """The module imports that tie a cycle's nodes together."""
    return ["%s -> %s" % (name, target) for name in sorted(MODULES) for target in sorted(imports(name))
            if node_of(name) in component and node_of(target) in component and node_of(name) != node_of(target)]


def test_no_cycle_between_packages():
    found = cycles(graph(package_of))
    assert not found, "\n".join("%s:\n  %s" % (c, "\n  ".join(why(c, package_of))) for c in found)


def test_no_cycle_between_modules():
    found = cycles(graph(lambda name: name))
    assert not found, found


def test_the_layers_below_the_vcpu_loop_run_downward():
    """core below mmu below io and cpu below vmx: the pieces the kernels share sit under every user of them."""
    edges = graph(package_of)
    for low, high in (("engine.core", "engine.mmu"), ("engine.mmu", "engine.io"), ("engine.mmu", "engine.cpu"),
                      ("engine.io", "engine.vmx"), ("engine.cpu", "engine.vmx"), ("engine.core", "engine.vmx")):
        assert high not in edges.get(low, set()), "%s imports %s" % (low, high)


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
