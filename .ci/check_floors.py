"""Checks that the venv running it holds exactly pyproject's floors (`make test-floors` runs it).

Every dependency of the installed classifier, dev extra included, must have a `>=X` floor, the
floors file (argv[1]) must pin it `==X`, and X must be what is installed: so the fast tests that
follow prove the floors pyproject promises, and the two files cannot drift apart.
"""

from __future__ import annotations

import sys
from importlib.metadata import metadata, requires, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def main(floors_file: str) -> int:
    floors: dict[str, Version] = {}
    for line in Path(floors_file).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins = [spec.version for spec in req.specifier if spec.operator == "=="]
            floors[canonicalize_name(req.name)] = Version(pins[0]) if pins else None
    problems = []
    declared = set()
    for text in requires("classifier") or []:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "classifier":  # an extra made of other extras (all, dev)
            continue
        declared.add(name)
        lower = [Version(spec.version) for spec in req.specifier if spec.operator == ">="]
        floor = floors.get(name)
        installed = Version(version(req.name))
        if not lower:
            problems.append(f"pyproject.toml: {req} has no >= floor")
        elif floor is None:
            problems.append(f"{floors_file}: no {req.name}==X line (pyproject says >={lower[0]})")
        elif lower[0] != floor:
            problems.append(f"{req.name}: pyproject.toml says >={lower[0]}, {floors_file} says =={floor}")
        elif installed.release != floor.release:  # release: torch 2.10.0+cpu counts as 2.10.0
            problems.append(f"{req.name}: {installed} is installed, not the floor {floor}")
    for name in sorted(set(floors) - declared):
        problems.append(f"{floors_file}: {name} is not a dependency in pyproject.toml")
    for problem in problems:
        print(f"check_floors: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_floors: the {len(declared)} dependencies are installed at pyproject's floors")
        print(f"check_floors: {python_floor_note()}")
    return 1 if problems else 0


def python_floor_note() -> str:
    """Whether this Python is the oldest that pyproject's requires-python allows (the Makefile takes
    it when the machine has it; otherwise the floors are proven on a newer Python only, said here)."""
    floor = Version(metadata("classifier")["Requires-Python"].removeprefix(">="))
    running = Version(".".join(map(str, sys.version_info[:2])))
    if running == floor:
        return f"on Python {running}, the oldest requires-python allows"
    return f"on Python {running}, NOT the oldest requires-python allows ({floor}): not installed here"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
