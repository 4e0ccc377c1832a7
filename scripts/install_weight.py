"""Installed size of rllc's core dependencies and of what each extra adds, measured in the current environment.

Run: python scripts/install_weight.py   (inside a venv where `pip install -e ".[test]"` or the extras to measure ran)
Sizes are the bytes of each installed distribution's files (its RECORD), summed over the dependency closure of the
core list and of each extra in pyproject.toml; an extra's figure counts only what the core does not already bring.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> None:
    dists = {_norm(d.metadata["Name"]): d for d in metadata.distributions()}

    def size(name: str) -> int:
        return sum(os.path.getsize(p) for f in dists[name].files or [] if (p := dists[name].locate_file(f)).is_file())

    def closure(reqs: list[Requirement]) -> set[str]:
        seen, todo = set(), list(reqs)
        while todo:
            r = todo.pop()
            n = _norm(r.name)
            if n in seen or n not in dists:
                continue
            seen.add(n)
            for sub in map(Requirement, dists[n].requires or []):
                if sub.marker is None or sub.marker.evaluate({"extra": ""}) or any(
                        sub.marker.evaluate({"extra": e}) for e in r.extras):
                    todo.append(sub)
        return seen

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = closure([Requirement(r) for r in project["dependencies"]])
    sizes = {n: size(n) for n in dists}

    def line(label: str, names: set[str], missing: list[str] = ()) -> str:
        top = ", ".join(f"{n} {sizes[n] / 1e6:.0f}" for n in sorted(names, key=lambda n: -sizes[n])[:5])
        note = f"  (not installed here: {', '.join(missing)})" if missing else ""
        return f"{label:<12}{sum(sizes[n] for n in names) / 1e6:>8.0f} MB {len(names):>4} dists   largest (MB): {top}{note}"

    print(line("core", core))
    for extra, reqs in project["optional-dependencies"].items():
        parsed = [Requirement(r) for r in reqs]
        missing = [r.name for r in parsed if _norm(r.name) not in dists]
        print(line(f"+[{extra}]", closure(parsed) - core, missing))


if __name__ == "__main__":
    sys.exit(main())
