"""The documentation stays true: names resolve to what they say, and every code block of README.md and docs/*.md runs."""

import importlib
import pkgutil
import sys

import rllc


def test_every_module_path_names_that_module():
    # `import rllc.sweep as S` must give the subpackage, not a function re-exported under the same name.
    shadowed = []
    for info in pkgutil.walk_packages(rllc.__path__, "rllc."):
        module = importlib.import_module(info.name)
        parent, _, leaf = info.name.rpartition(".")
        if getattr(sys.modules[parent], leaf) is not module:
            shadowed.append(f"{info.name} is {getattr(sys.modules[parent], leaf)!r}")
    assert not shadowed, shadowed
