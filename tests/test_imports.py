# SPDX-License-Identifier: BSD-3-Clause
"""The package's modules import one way: no cycle, counting imports inside
functions (read from the source with `ast`, so lazy imports count); imports
for type checkers only (``if TYPE_CHECKING:``), which never run, do not."""

import ast
import pathlib

import latentspace

PACKAGE = pathlib.Path(latentspace.__file__).parent


def _modules():
    """Dotted module name -> source path, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["latentspace", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _runtime_nodes(tree):
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not (isinstance(child, ast.If) and ast.unparse(child.test)
                    in ("TYPE_CHECKING", "typing.TYPE_CHECKING")):
                stack.append(child)


def _imports(name, path, modules):
    """The package's modules that module ``name`` imports at run time,
    anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # ``from . import x`` imports the module x; ``from .m import f`` m.
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in modules else base for t in targets]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph():
    """Module -> the set of the package's modules it imports."""
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph):
    """The strongly connected components of ``graph`` with more than one
    module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_finds_lazy_imports():
    graph = import_graph()
    # LatentSpace.save imports _files.space_file inside the method.
    assert "latentspace._files.space_file" in graph["latentspace._space"]
    assert "latentspace._model" in graph["latentspace._space"]


def test_type_checking_imports_are_left_out():
    graph = import_graph()
    # metrics names LatentSpace in annotations only.
    assert "latentspace._space" not in graph["latentspace.metrics"]


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


# The layers of README.md's layout, bottom up: a module imports only modules
# of its own layer or of the layers before it.
LAYERS = [
    ["_exceptions", "_validation", "_typing", "_threads", "_monitor", "_version"],
    ["_kernels"],
    ["_model"],
    ["_training"],
    ["_files"],
    ["_search"],
    ["metrics", "_dask"],
    ["_space"],
    ["sklearn", "_plots", "_demo", "cli", "__main__", ""],
]


def _layer(module):
    """The position in `LAYERS` of a module of the package."""
    top = module.removeprefix("latentspace").removeprefix(".").split(".")[0]
    for position, members in enumerate(LAYERS):
        if top in members:
            return position
    raise AssertionError(f"{module} is in no layer of LAYERS")


def test_imports_run_down_the_layers():
    upward = [
        (module, target)
        for module, targets in import_graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert not upward, upward
