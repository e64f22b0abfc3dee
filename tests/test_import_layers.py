"""The project's import graph points one way: data -> model core -> converter library -> hub -> tools.

Read with `ast` from the source files (nothing is imported), module-level and
function-level imports alike, including `importlib.import_module("...")` calls.
Rules, checked for every `.py` file of `checkpoints/`, `convnext_hub/` and `converters/`:

1. Every module belongs to a layer of `LAYERS` (a new module must be placed there).
2. A module imports project modules of its own layer or lower layers only.
3. A project module is imported at module level. A function-level (lazy) import of a
   project module is allowed only in the PEP 562 `__getattr__` of a package listed in
   `FACADES`, which may import any layer that way (but only its own and lower ones eagerly).
4. Function-level imports of anything else are optional heavy dependencies (`LAZY_ALLOWED`):
   importing them on first use keeps `import convnext_hub` light and torch-free.
   `importlib.import_module(name)` with a computed `name` and no package counts as such an import
   (e.g. a helper that loads optional exporters by name); with a package (`(f".{x}", __name__)`) it
   loads a project module.
5. No cycles among the project's modules.

`from convnext_hub import name` of a name the facade only provides lazily counts as an
import of the highest layer (it runs the facade's `__getattr__`).
"""

import ast
import fnmatch
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("checkpoints", "convnext_hub", "converters")

# Layer number -> (name, module patterns). Lowest first; a pattern ending in ".*" covers a package's modules.
LAYERS = {
    0: ("data", ["checkpoints", "checkpoints.*"]),
    1: (
        "model core",
        [
            "convnext_hub.config",
            "convnext_hub.errors",
            "convnext_hub.arguments",
            "convnext_hub.keras_compat",
            "convnext_hub.data_format",
            "convnext_hub.output_stride",
            "convnext_hub.intermediates",
            "convnext_hub.remat",
            "convnext_hub.layers",
            "convnext_hub.variants",
            "convnext_hub.model",
            "convnext_hub.fast_path",
            "convnext_hub.families",
            "convnext_hub.heads",
            "convnext_hub.distribution",
            "convnext_hub.weights_io",
            "convnext_hub.preprocessing",
            "convnext_hub.labels",
            "convnext_hub.version",
            "convnext_hub.saved_folder",
            "convnext_hub.cache_root",
            "convnext_hub.compiled_forward",
            "convnext_hub.model_card",
            "convnext_hub.stored_arrays",
        ],
    ),
    2: (
        "converter library",
        [
            "convnext_hub.convert",
            "convnext_hub.convert.version",
            "convnext_hub.convert.readers",
            "convnext_hub.convert.writers",
            "convnext_hub.convert.layouts",
            "convnext_hub.convert.mapping",
            "convnext_hub.convert.conversion",
            "convnext_hub.convert.randomize",
            "convnext_hub.convert.verification",
        ],
    ),
    3: ("hub", ["convnext_hub.hub", "convnext_hub.hub.*"]),
    4: (
        "tools",
        [
            "converters",
            "converters.timm_to_keras",
            "converters.publish",
            "converters.cli",
            "converters.verification",
            "convnext_hub.export",
            "convnext_hub.keras_hub",
            "convnext_hub.keras_hub.*",
            "convnext_hub.finetune",
            "convnext_hub.finetune.*",
        ],
    ),
}
# Package facades: module -> (its layer, the highest layer its PEP 562 `__getattr__` loads on first use).
# Eager imports obey the first; a name the facade provides only lazily counts as the second for its importers.
FACADES = {
    "convnext_hub": (1, 3),  # the public API: models eagerly, `load_pretrained` (hub) on first use
    # Re-exports `convnext_hub.convert` on first use so that `python -m converters.timm_to_keras` can import
    # torch and timm before anything imports keras / TensorFlow (the other order crashes some Linux machines).
    "converters": (4, 2),
}
# Command-line entry modules: they import torch and timm (for --verify) before anything imports Keras and
# TensorFlow (`converters.cli.start_frameworks`), so the project modules that import Keras are imported
# inside their functions, after that call.
FRAMEWORK_ORDER_ENTRY_POINTS = {"converters.timm_to_keras", "converters.publish"}
# Top-level packages a function may import lazily: optional or heavy dependencies (frameworks, exporters).
LAZY_ALLOWED = {
    "torch",
    "torchvision",
    "timm",
    "tensorflow",
    "jax",
    "jaxlib",
    "keras_hub",
    "transformers",
    "onnx",
    "onnxruntime",
    "tf2onnx",
    "jax2onnx",
    "openvino",
    "ai_edge_litert",
    "tflite_runtime",
    "matplotlib",  # the fine-tuning curves, drawn only when it is installed
    "keras",  # imports its backend (TensorFlow: seconds), after torch where both are needed
    "importlib",  # only reachable in a facade's `__getattr__` (rule 3 checks what it loads)
}
TOP = max(LAYERS)


# --------------------------------------------------------------------------- reading the graph


def module_files():
    """{dotted module name: path} of every project module."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = module_files()


def layer_of(module):
    if module in FACADES:
        return FACADES[module][0]
    matches = [n for n, (_, patterns) in LAYERS.items() for p in patterns if fnmatch.fnmatchcase(module, p)]
    return (
        max(matches) if matches else None
    )  # "convnext_hub.hub.*" inside "convnext_hub.*" would take the more specific


def _is_package(module):
    return MODULES[module].name == "__init__.py"


def _resolve_relative(module, level, target):
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _eager_names(module):
    """Names bound at module level in `module` (for `from facade import name`)."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


class Import:
    def __init__(self, importer, target, line, function, name=None):
        self.importer, self.target, self.line, self.function, self.name = importer, target, line, function, name

    @property
    def where(self):
        rel = MODULES[self.importer].relative_to(REPO_ROOT)
        return f"{rel}:{self.line}" + (f" (in {self.function}())" if self.function else "")

    @property
    def project(self):
        return self.target.split(".")[0] in PACKAGES

    @property
    def target_layer(self):
        """Layer of what the import runs: a module, or for a name a facade provides lazily, what that loads."""
        if self.target in FACADES and self.name is not None and self.name not in _eager_names(self.target):
            return FACADES[self.target][1]
        return layer_of(self.target)


def imports_of(module, source=None):
    """Every import statement / `importlib.import_module(constant)` of `module` (its file, or `source`),
    with the function it sits in."""
    path = MODULES[module]
    tree = ast.parse(source if source is not None else path.read_text(), str(path))
    found = []

    def add(target, node, function, name=None):
        if name is not None and f"{target}.{name}" in MODULES:  # `from package import submodule`
            target, name = f"{target}.{name}", None
        found.append(Import(module, target, node.lineno, function, name))

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Lambda):
                inner = function or "<lambda>"
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, function)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve_relative(module, child.level, child.module) if child.level else child.module
                for alias in child.names:
                    add(target, child, function, alias.name)
            elif isinstance(child, ast.Call) and _is_import_module_call(child):
                target = _constant_import_target(module, child)
                if target is not None:
                    add(target, child, function)
                elif len(child.args) > 1 or any(k.arg == "package" for k in child.keywords):
                    add("<dynamic>", child, function)  # relative to a package: the project's own modules
                # else: a name computed at run time, e.g. a helper importing optional exporters by name
            visit(child, inner)

    visit(tree, None)
    return found


def _is_import_module_call(call):
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
        isinstance(f, ast.Name) and f.id in ("import_module", "__import__")
    )


def _constant_import_target(module, call):
    args = call.args
    if not args or not isinstance(args[0], ast.Constant) or not isinstance(args[0].value, str):
        return None
    name = args[0].value
    if name.startswith("."):
        level = len(name) - len(name.lstrip("."))
        return _resolve_relative(module, level, name.lstrip(".") or None)
    return name


ALL_IMPORTS = [imp for module in MODULES for imp in imports_of(module)]


def _in_facade_getattr(imp):
    return imp.importer in FACADES and imp.function == "__getattr__"


# --------------------------------------------------------------------------- the rules


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if layer_of(m) is None)
    assert not unplaced, f"modules in no layer of LAYERS (place them in tests/test_import_layers.py): {unplaced}"


def test_imports_point_down_the_layers():
    violations = []
    for imp in ALL_IMPORTS:
        if not imp.project or _in_facade_getattr(imp):
            continue
        mine, theirs = layer_of(imp.importer), imp.target_layer
        if theirs is None:
            violations.append(f"{imp.where}: imports {imp.target}, which is no project module in any layer")
        elif mine is not None and theirs > mine:
            lazy = imp.target in FACADES and imp.name and theirs != layer_of(imp.target)
            what = imp.target + (f" ({imp.name!r}, loaded lazily by the facade)" if lazy else "")
            violations.append(
                f"{imp.where}: {imp.importer} ({LAYERS[mine][0]}) imports {what} ({LAYERS[theirs][0]}), a higher layer"
            )
    assert not violations, "imports against the layers:\n" + "\n".join(violations)


def test_project_modules_are_imported_at_module_level():
    violations = [
        f"{imp.where}: imports {imp.target}{'.' + imp.name if imp.name else ''} inside a function "
        f"(move it to the top of the module)"
        for imp in ALL_IMPORTS
        if imp.function
        and (imp.project or imp.target == "<dynamic>")
        and not _in_facade_getattr(imp)
        and imp.importer not in FRAMEWORK_ORDER_ENTRY_POINTS
    ]
    assert not violations, "function-level imports of project modules:\n" + "\n".join(violations)


def test_function_level_imports_are_optional_heavy_dependencies():
    violations = sorted(
        {
            f"{imp.where}: imports {imp.target} inside a function ({imp.target.split('.')[0]} is not in LAZY_ALLOWED: "
            f"import it at module level, or add it there if it is an optional heavy dependency)"
            for imp in ALL_IMPORTS
            if imp.function
            and not imp.project
            and imp.target != "<dynamic>"
            and imp.target.split(".")[0] not in LAZY_ALLOWED
        }
    )
    assert not violations, "function-level imports of light or required packages:\n" + "\n".join(violations)


def test_facades_declare_what_they_load_lazily():
    for facade, (_, lazy_layer) in FACADES.items():
        loaded = [i for i in ALL_IMPORTS if i.importer == facade and i.function == "__getattr__" and i.project]
        for imp in loaded:
            assert layer_of(imp.target) <= lazy_layer, (
                f"{imp.where}: loads {imp.target} (layer {layer_of(imp.target)}); FACADES says {lazy_layer}"
            )


def test_no_import_cycles():
    graph = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        if imp.project and imp.target in MODULES and imp.target != imp.importer and not _in_facade_getattr(imp):
            graph[imp.importer].add(imp.target)
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# --------------------------------------------------------------------------- the checker itself


CHECKER_SAMPLE = """
import torch
from . import cache
from .. import variants
from ..families import create_model
from convnext_hub.convert import readers, convert
import convnext_hub.hub.fetch


def f():
    import timm
    from convnext_hub.convert.conversion import convert
    importlib.import_module("convnext_hub.layers")
    importlib.import_module(f".{name}", __name__)
    importlib.import_module(optional_tool)
"""


def test_the_checker_sees_every_kind_of_import():
    """The rules above read what they should: relative, `from package import module`, lazy, importlib."""
    found = [(i.target, i.name, i.function) for i in imports_of("convnext_hub.hub.loader", CHECKER_SAMPLE)]
    assert found == [
        ("torch", None, None),
        ("convnext_hub.hub.cache", None, None),
        ("convnext_hub.variants", None, None),
        ("convnext_hub.families", "create_model", None),
        ("convnext_hub.convert.readers", None, None),
        ("convnext_hub.convert", "convert", None),
        ("convnext_hub.hub.fetch", None, None),
        ("timm", None, "f"),
        ("convnext_hub.convert.conversion", "convert", "f"),
        ("convnext_hub.layers", None, "f"),
        ("<dynamic>", None, "f"),
    ]
    assert layer_of("convnext_hub.hub.cache") == 3 and layer_of("convnext_hub.model") == 1
    assert layer_of("convnext_hub.keras_hub.backbone") == 4 and layer_of("convnext_hub.nope") is None
    assert layer_of("checkpoints.generate") == 0 and layer_of("converters") == 4
    lazy = Import("convnext_hub.convert.layouts", "convnext_hub", 1, None, "load_pretrained")
    eager = Import("convnext_hub.convert.layouts", "convnext_hub", 1, None, "create_model")
    assert lazy.target_layer == 3 and eager.target_layer == 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
