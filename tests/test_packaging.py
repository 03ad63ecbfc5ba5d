"""The packaging metadata ships every package folder and the configs, and nothing else.

pyproject.toml keeps no package list: setuptools discovers the packages inside the folders
`[tool.setuptools.package-dir]` maps (its "explicit layout"). These tests run that discovery
(setuptools' own, in-process, no wheel build) and check what it finds. To look at a real wheel:
`pip wheel --no-deps -w /tmp/wheelcheck .` then `unzip -l /tmp/wheelcheck/jaxguard-*.whl`.
"""

import os
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = {"jaxguard": "jaxguard", "jaxguard.configs": "configs"}


def _setuptools_table():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _package_folders():
    """Every folder under the mapped ones, as the package name it ships as."""
    found = {}
    for package, folder in PACKAGE_DIR.items():
        top = os.path.join(ROOT, folder)
        for path, dirs, _ in os.walk(top):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
            relative = os.path.relpath(path, top)
            name = package if relative == "." else f"{package}.{relative.replace(os.sep, '.')}"
            found[name] = path
    return found


def test_pyproject_maps_the_folders_and_keeps_no_package_list():
    setuptools = _setuptools_table()
    assert setuptools == {"package-dir": PACKAGE_DIR}, (
        "[tool.setuptools] should hold only package-dir; a `packages` list would turn the "
        "discovery off"
    )


def test_every_folder_under_a_mapped_one_is_a_regular_package():
    # Discovery ships any folder there as a package, so a folder without __init__.py would
    # ship as an (unintended) namespace package.
    missing = [
        os.path.relpath(path, ROOT)
        for path in _package_folders().values()
        if not os.path.isfile(os.path.join(path, "__init__.py"))
    ]
    assert not missing, f"folders without __init__.py: {', '.join(sorted(missing))}"


def test_setuptools_discovers_every_package_and_no_tests():
    setuptools = pytest.importorskip("setuptools")
    dist = setuptools.Distribution(
        {"name": "jaxguard", "package_dir": dict(_setuptools_table()["package-dir"])}
    )
    dist.src_root = ROOT
    dist.set_defaults(name=False)  # setuptools' automatic discovery, as in a wheel build.
    discovered = set(dist.packages)
    assert discovered == set(_package_folders())
    for package in ("jaxguard.guards", "jaxguard.configs", "jaxguard.tasks.cvae"):
        assert package in discovered
    assert all(p == "jaxguard" or p.startswith("jaxguard.") for p in discovered)
    assert not any("tests" in p.split(".") for p in discovered)


def test_bundled_configs_import_as_jaxguard_configs():
    import jaxguard.configs.optical_depth as bundled

    assert os.path.samefile(os.path.dirname(bundled.__file__), os.path.join(ROOT, "configs"))
    assert bundled.get_config().task == "optical_depth"
