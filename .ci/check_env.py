"""Check the virtual environment against the project's pins before the tests run.

The test command reuses ``.venv`` (a fresh one costs minutes of reinstalling the same
pinned wheels); this keeps the guarantee a fresh one gave: every installed distribution is
required, directly or through its dependencies, by ``fer-pipeline[test]`` (so a package
installed by hand cannot hide a missing dependency), and every pinned requirement is
installed at its pinned version. Exit 1 naming each problem; 0 and one line when clean.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT, EXTRAS = "fer-pipeline", ("test",)
#: The environment's own tools, which nothing declares.
TOOLS = {"pip", "setuptools", "wheel"}


def closure(project: str, extras: tuple[str, ...]) -> dict[str, set[str]]:
    """Every distribution ``project[extras]`` needs, by canonical name, with the extras it
    is needed with (requirements whose markers do not hold here are left out)."""
    needed: dict[str, set[str]] = {}
    todo = [(project, set(extras))]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        seen = needed.get(key)
        if seen is not None and wanted <= seen:
            continue
        needed[key] = (seen or set()) | wanted
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # reported as missing by check()
        for text in requires:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e})
                                         for e in ("", *needed[key])):
                todo.append((req.name, set(req.extras)))
    return needed


def check() -> list[str]:
    """The problems found, as lines for people (empty when the environment is clean)."""
    problems = []
    needed = closure(PROJECT, EXTRAS)
    installed = {canonicalize_name(d.metadata["Name"]): d.version
                 for d in metadata.distributions()}
    for name in sorted(set(installed) - set(needed) - TOOLS):
        problems.append(f"{name} {installed[name]} is installed but nothing in "
                        f"{PROJECT}[{','.join(EXTRAS)}] requires it: declare it in "
                        f"pyproject.toml or uninstall it")
    for name in sorted(set(needed) - set(installed)):
        problems.append(f"{name} is required but not installed")
    for text in metadata.requires(PROJECT) or []:
        req = Requirement(text)
        version = installed.get(canonicalize_name(req.name))
        if version is not None and req.specifier and version not in req.specifier:
            problems.append(f"{req.name} {version} does not match its pin {req.specifier}")
    return problems


def main() -> int:
    """Print the problems (exit 1) or one line saying the environment matches (exit 0)."""
    problems = check()
    for line in problems:
        print(f"environment: {line}", file=sys.stderr)
    if not problems:
        print(f"environment: {len(closure(PROJECT, EXTRAS))} distributions, all required by "
              f"{PROJECT}[{','.join(EXTRAS)}] and at their pins")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
