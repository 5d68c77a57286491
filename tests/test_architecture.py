"""The package's shape: data flows one way through the stages, with no loops.

The stage order is written here once. A module may import from its own stage
or an earlier one; an import from a later stage, or any import loop (function
-level imports included), fails this test with the offending modules named.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "triplet_audio")

# The path of the data, first to last (README "Architecture").
STAGES = ("constants", "config", "features", "sampling", "model", "training",
          "serving", "hear", "search", "evaluation", "demo", "cli")


def _modules():
    """{dotted module name: path} of every module of the package."""
    found = {}
    for directory, _, names in os.walk(ROOT):
        for name in names:
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(directory, name),
                                  os.path.dirname(ROOT))[:-3]
            dotted = rel.replace(os.sep, ".")
            if dotted.endswith(".__init__"):
                dotted = dotted[:-len(".__init__")]
            found[dotted] = os.path.join(directory, name)
    return found


MODULES = _modules()


def _imports(path):
    """Package modules imported anywhere in the file (function level too)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module.startswith("triplet_audio")):
            for alias in node.names:
                candidate = node.module + "." + alias.name
                out.add(candidate if candidate in MODULES else node.module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("triplet_audio"):
                    out.add(alias.name)
    return {m for m in out if m in MODULES and m != "triplet_audio"}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def stage(module):
    """Index in STAGES of a module (`triplet_audio.<stage>[.module]`)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return STAGES.index(parts[1])


def test_every_module_belongs_to_a_stage():
    strays = [m for m in MODULES if m != "triplet_audio" and
              m.split(".")[1] not in STAGES]
    assert not strays, "modules outside the stages: %s" % strays


def test_no_import_reaches_back_to_a_later_stage():
    back = ["%s -> %s" % (m, i) for m, imports in sorted(GRAPH.items())
            for i in sorted(imports)
            if stage(m) is not None and stage(i) > stage(m)]
    assert not back, "imports from a later stage:\n" + "\n".join(back)


def _cycle(graph):
    # Depth-first search; returns one loop as a list of modules, or None.
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_loop():
    loop = _cycle(GRAPH)
    assert loop is None, "import loop: " + " -> ".join(loop)


@pytest.mark.parametrize("graph, has_loop", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"a"}}, True),
])
def test_the_loop_finder_finds_loops(graph, has_loop):
    assert (_cycle(graph) is not None) == has_loop


def test_config_home_does_not_import_tensorflow():
    for module, path in MODULES.items():
        if module != "triplet_audio" and module.split(".")[1] in (
                "constants", "config"):
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                names = ([a.name for a in node.names]
                         if isinstance(node, ast.Import) else
                         [node.module or ""]
                         if isinstance(node, ast.ImportFrom) else [])
                assert not any(n.split(".")[0] == "tensorflow"
                               for n in names), module
