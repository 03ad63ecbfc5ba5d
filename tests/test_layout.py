"""The layout enforces itself: no private name crosses a module boundary, and every test file
mirrors the module or package it tests.

Private names (rule 1). A leading underscore (not a dunder) marks a name or a module as private.
Every module under jaxguard/, configs/ (the package `jaxguard.configs`) and benchmarks/ is
parsed with `ast`, and these fail, each reported as `file:line` with the name:

* `from X import _name`, where `_name` is not a module: a private name of another module;
* `import a.b._m`, `from a.b._m import x` or `from a.b import _m`, where `a.b._m` is a private
  module, from a module outside the package `a.b` (its `__init__` and the modules under it may
  import it: that is how `jaxguard.losses` re-exports `jaxguard.losses._vae`);
* `alias._name` (or `alias.sub._name`), where `alias` is any name an import binds (a module,
  or a class or function taken from one): a private attribute reached through another module.

Only first-party names count (jaxguard, benchmarks): a third-party private API is a separate,
deliberate choice, explained where it is used (jaxguard/host_memory.py reads one of JAX's).

Mirroring (rule 2). Every `tests/**/test_*.py` mirrors a module or package:

* `tests/<dirs>/test_<name>.py` <-> `jaxguard/<dirs>/<name>.py`, `jaxguard/<dirs>/_<name>.py`
  (a private module the package re-exports) or the package `jaxguard/<dirs>/<name>/`;
  `tests/benchmarks/test_<name>.py` <-> `benchmarks/<name>.py` alike;
* under `tests/tasks/<task>/`, names carry the task: `test_<task>_<name>.py` <-> the module (or
  subpackage) `jaxguard/tasks/<task>/<name>.py`, and `test_<task>.py` <-> the task package
  itself (its `TASK`, e.g. a run through the harness);
* `REPOSITORY_TESTS`: tests of the repository rather than of a module.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Source folder -> the package it is imported as.
SOURCE_TREES = {"jaxguard": "jaxguard", "configs": "jaxguard.configs", "benchmarks": "benchmarks"}
REPOSITORY_TESTS = {
    "tests/test_layout.py": "the layout of the source and test trees",
    "tests/test_packaging.py": "pyproject.toml: the packages a wheel ships",
    "tests/test_reliability.py": "python -m jaxguard.train killed, stopped, corrupted, resumed",
}


def _walk(top):
    for path, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(path, name)


def _source_modules():
    """(path, dotted module name, is a package `__init__`) of every source module."""
    for folder, package in SOURCE_TREES.items():
        top = os.path.join(ROOT, folder)
        for path in _walk(top):
            parts = os.path.relpath(path, top)[: -len(".py")].split(os.sep)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            yield path, ".".join([package, *parts]), is_package


def _first_party_path(dotted):
    """The file or folder of a first-party module, or None (third party, or not a module)."""
    for folder, package in sorted(SOURCE_TREES.items(), key=lambda item: -len(item[1])):
        if dotted == package or dotted.startswith(package + "."):
            rest = dotted[len(package) + 1 :].split(".") if dotted != package else []
            base = os.path.join(ROOT, folder, *rest)
            for candidate in (base + ".py", base):
                if os.path.exists(candidate):
                    return candidate
            return None
    return None


FIRST_PARTY = ("jaxguard", "benchmarks")


def _first_party(dotted):
    return dotted.split(".")[0] in FIRST_PARTY


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _inside(module, package):
    return module == package or module.startswith(package + ".")


def _private_module_problem(importer, dotted):
    """Why importing the module `dotted` from `importer` crosses a private boundary, or None."""
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        owner = ".".join(parts[:index])
        if _is_private(part) and not (owner and _inside(importer, owner)):
            where = f"outside {owner}" if owner else "outside it"
            return f"imports the private module {'.'.join(parts[: index + 1])} from {where}"
    return None


def _absolute(importer, is_package, node):
    """The absolute module an `ImportFrom` node reads from."""
    if not node.level:
        return node.module
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _attribute_chain(node):
    """`a.b._c` as ["a", "b", "_c"] for a pure Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _private_use_problems(path, module, is_package):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    where = os.path.relpath(path, ROOT)
    problems, imported = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _first_party(alias.name):
                    continue
                imported.add(alias.asname or alias.name.split(".")[0])
                reason = _private_module_problem(module, alias.name)
                if reason:
                    problems.append(f"{where}:{node.lineno}: `import {alias.name}` {reason}")
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node)
            if not _first_party(source):
                continue
            reason = _private_module_problem(module, source)
            if reason:
                problems.append(f"{where}:{node.lineno}: `from {source} import ...` {reason}")
            for alias in node.names:
                imported.add(alias.asname or alias.name)
                if not _is_private(alias.name):
                    continue
                target = f"{source}.{alias.name}"
                if _first_party_path(target) is not None:
                    reason = _private_module_problem(module, target)
                else:
                    reason = f"imports the private name {alias.name} of {source}"
                if reason:
                    problems.append(
                        f"{where}:{node.lineno}: `from {source} import {alias.name}` {reason}"
                    )
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _attribute_chain(node)
        if chain is None or chain[0] not in imported or not _is_private(chain[-1]):
            continue
        problems.append(
            f"{where}:{node.lineno}: `{'.'.join(chain)}` reads the private attribute "
            f"{chain[-1]} of the imported {chain[0]}"
        )
    return sorted(problems, key=lambda problem: int(problem.split(":")[1]))


def test_no_private_name_crosses_a_module_boundary():
    problems = []
    for path, module, is_package in _source_modules():
        problems.extend(_private_use_problems(path, module, is_package))
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------- mirroring


def _mirrored(test_path):
    """The modules/packages `tests/<dirs>/test_<name>.py` may mirror (paths from ROOT)."""
    dirs = os.path.relpath(os.path.dirname(test_path), os.path.join(ROOT, "tests"))
    dirs = [] if dirs == "." else dirs.split(os.sep)
    name = os.path.basename(test_path)[len("test_") : -len(".py")]
    top = "jaxguard"
    if dirs[:1] == ["benchmarks"]:
        top, dirs = "benchmarks", dirs[1:]
    if len(dirs) == 2 and dirs[0] == "tasks":
        task = dirs[1]
        if name == task:
            return [os.path.join(top, "tasks", task, "__init__.py")]
        if not name.startswith(task + "_"):
            return []
        name = name[len(task) + 1 :]
    folder = os.path.join(top, *dirs)
    return [
        os.path.join(folder, f"{name}.py"),
        os.path.join(folder, f"_{name}.py"),
        os.path.join(folder, name, "__init__.py"),
    ]


def test_every_test_file_mirrors_a_module_or_package():
    unmatched = []
    for path in _walk(os.path.join(ROOT, "tests")):
        if not os.path.basename(path).startswith("test_"):
            continue
        relative = os.path.relpath(path, ROOT).replace(os.sep, "/")
        if relative in REPOSITORY_TESTS:
            continue
        candidates = _mirrored(path)
        if not any(os.path.isfile(os.path.join(ROOT, c)) for c in candidates):
            tried = " or ".join(candidates) or "nothing (task tests are test_<task>[_<name>].py)"
            unmatched.append(f"{relative}: mirrors {tried}, none of which exists")
    assert not unmatched, "test files that mirror no module:\n" + "\n".join(unmatched)


def test_the_rules_on_small_examples(tmp_path):
    assert _private_module_problem("jaxguard.losses", "jaxguard.losses._vae") is None
    assert _private_module_problem("jaxguard.losses._sums", "jaxguard.losses._vae") is None
    assert "jaxguard.losses._pointing from outside jaxguard.losses" in _private_module_problem(
        "jaxguard.tasks.pointer.loss", "jaxguard.losses._pointing"
    )
    assert _private_module_problem("benchmarks.losses", "jaxguard._checks") is not None
    assert _private_module_problem("jaxguard.guards.base", "jaxguard._checks") is None
    source = tmp_path / "example.py"
    source.write_text(
        "import numpy as np\n"
        "from jaxguard import png\n"
        "from jaxguard.guards.base import _check_optional_finite, __doc__\n"
        "from jaxguard.losses import _pointing\n"
        "import jaxguard.metrics._moments\n"
        "x = png._chunk(b'IEND', b'') + np._core.x + self._fine\n"
        "from ..contract import _hidden, Task\n"
        "from .._private_here import fine_inside_jaxguard_tasks\n"
    )
    problems = _private_use_problems(str(source), "jaxguard.tasks.pointer.loss", False)
    expected = [
        ":3: `from jaxguard.guards.base import _check_optional_finite` imports the private name",
        ":4: `from jaxguard.losses import _pointing` imports the private module",
        ":5: `import jaxguard.metrics._moments` imports the private module",
        ":6: `png._chunk` reads the private attribute _chunk of the imported png",
        ":7: `from jaxguard.tasks.contract import _hidden` imports the private name",
    ]
    assert len(problems) == len(expected)
    for fragment in expected:
        assert any(fragment in problem for problem in problems), fragment
    assert _mirrored(os.path.join(ROOT, "tests", "tasks", "cvae", "test_cvae_model.py")) == [
        os.path.join("jaxguard", "tasks", "cvae", "model.py"),
        os.path.join("jaxguard", "tasks", "cvae", "_model.py"),
        os.path.join("jaxguard", "tasks", "cvae", "model", "__init__.py"),
    ]
