"""The packaging metadata ships every package folder and the configs."""

import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_package_folder_is_listed_in_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {"jaxguard.configs"}
    for folder, _, files in os.walk(os.path.join(ROOT, "jaxguard")):
        if "__init__.py" in files:
            found.add(os.path.relpath(folder, ROOT).replace(os.sep, "."))
    assert listed == found
    assert setuptools["package-dir"]["jaxguard.configs"] == "configs"


def test_bundled_configs_import_as_jaxguard_configs():
    import jaxguard.configs.optical_depth as bundled

    assert os.path.samefile(os.path.dirname(bundled.__file__), os.path.join(ROOT, "configs"))
    assert bundled.get_config().task == "optical_depth"
