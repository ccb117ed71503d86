"""Whether this virtualenv already holds fwemu as scripts/setup.sh installs it: editable from
the repository, with every requirement that pyproject.toml names now and, unless --runtime, its
test extras.

Run by the virtualenv's own Python (`.venv/bin/python scripts/installed.py [--runtime] [ROOT]`):
exit status 0 if so, else 1 with what is missing on stderr, one line each. setup.sh runs pip only
then, so a second run changes nothing (pip would rewrite .venv/bin/fwemu, even while it is in use).
"""

from __future__ import annotations

import json
import sys
import tomllib
from importlib import metadata
from pathlib import Path


def problems(root: Path, extras: tuple[str, ...]) -> list[str]:
    """What differs from an up-to-date editable install of the project at `root`, with `extras`."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    name = project["name"]
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return [f"{name} is not installed"]
    try:
        from packaging.requirements import Requirement  # pytest's dependency
    except ImportError:
        try:  # a runtime install has no pytest, but every venv has pip, which vendors it
            from pip._vendor.packaging.requirements import Requirement
        except ImportError:
            return ["packaging is missing: the requirements cannot be checked"]
    found = []
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    if origin.get("url") != root.resolve().as_uri() or not origin.get("dir_info", {}).get(
        "editable"
    ):
        found.append(f"{name} is not installed editable from {root.resolve()}")
    if dist.version != project["version"]:
        found.append(
            f"{name} {dist.version} is installed, pyproject.toml says {project['version']}"
        )
    wanted = {("console_scripts", k, v) for k, v in project.get("scripts", {}).items()}
    for group, points in project.get("entry-points", {}).items():
        wanted |= {(group, k, v) for k, v in points.items()}
    have = {(e.group, e.name, e.value) for e in dist.entry_points}
    found += [f"entry point {g} {n} = {v} is not installed" for g, n, v in sorted(wanted - have)]
    optional = project.get("optional-dependencies", {})
    texts = [*project["dependencies"], *(t for extra in extras for t in optional.get(extra, []))]
    for requirement in map(Requirement, texts):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            found.append(f"{requirement} is missing")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{requirement.name} {version} is installed, {requirement} is wanted")
    return found


def main() -> int:
    args = sys.argv[1:]
    runtime = "--runtime" in args
    args = [a for a in args if a != "--runtime"]
    root = Path(args[0] if args else Path(__file__).resolve().parents[1])
    found = problems(root, () if runtime else ("test",))
    for problem in found:
        print(f"setup: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
