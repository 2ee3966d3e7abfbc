"""One image's own distribution, cut from the project's pyproject.toml.

Run in the builder stage of Dockerfile.proxy / Dockerfile.init / Dockerfile.tools, with the
base image's interpreter (standard library only), in the directory holding the project's
pyproject.toml:

    python3 distribution.py IMAGE --requirements   # the image's requirements, one a line
    python3 distribution.py IMAGE --pyproject      # the pyproject.toml of the image's wheel

``[tool.imds-oidc-proxy.images.IMAGE]`` in pyproject.toml says what the image holds: its
packages (each named; a subpackage not listed stays out), its single modules (``modules``:
some modules of a package without the rest of it, as setuptools' ``py-modules``; the
package's ``__init__`` comes along), whether it takes the project's dependencies, which
extras, and which console scripts. The pyproject written here builds a wheel with just that,
under the image's own distribution name, so the image's venv is an ordinary pip install whose
metadata lists what is really there, and nothing else of the tree (the dev issuer, the
sidecar's server in the tools image) can come along.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any


class DistributionError(Exception):
    """pyproject.toml does not describe the image (or describes it wrongly)."""


def load(pyproject: Path) -> dict[str, Any]:
    with pyproject.open("rb") as f:
        return tomllib.load(f)


def images(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every image's entry of ``[tool.imds-oidc-proxy.images]``."""
    found: dict[str, dict[str, Any]] = project.get("tool", {}).get("imds-oidc-proxy", {})
    return dict(found.get("images", {}))


def image_entry(project: dict[str, Any], image: str) -> dict[str, Any]:
    entry = images(project).get(image)
    if entry is None:
        raise DistributionError(f"pyproject.toml has no [tool.imds-oidc-proxy.images.{image}]")
    return entry


def requirements(project: dict[str, Any], image: str) -> list[str]:
    """The image's requirements: the project's (if taken) and its extras', each once."""
    entry = image_entry(project, image)
    meta = project["project"]
    found: list[str] = list(meta.get("dependencies", [])) if entry.get("dependencies") else []
    extras = meta.get("optional-dependencies", {})
    for extra in entry.get("extras", []):
        if extra not in extras:
            raise DistributionError(f"image {image}: no extra named {extra!r}")
        found.extend(extras[extra])
    return list(dict.fromkeys(found))


def scripts(project: dict[str, Any], image: str) -> dict[str, str]:
    """The console scripts the image's wheel installs (a subset of the project's)."""
    entry = image_entry(project, image)
    declared = project["project"].get("scripts", {})
    chosen = {}
    for name in entry.get("scripts", []):
        if name not in declared:
            raise DistributionError(f"image {image}: no console script named {name!r}")
        chosen[name] = declared[name]
    return chosen


def _toml_list(values: list[str]) -> str:
    # A JSON string is a TOML basic string (same escapes), so json.dumps quotes correctly.
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def pyproject(project: dict[str, Any], image: str) -> str:
    """The pyproject.toml of the image's wheel: same code and version, fewer parts."""
    entry = image_entry(project, image)
    meta = project["project"]
    lines = [
        "# Written by deploy/image/distribution.py from the project's pyproject.toml.",
        "[build-system]",
        f"requires = {_toml_list(project['build-system']['requires'])}",
        f"build-backend = {json.dumps(project['build-system']['build-backend'])}",
        "",
        "[project]",
        f"name = {json.dumps(entry['name'])}",
        f"version = {json.dumps(meta['version'])}",
        f"description = {json.dumps(meta.get('description', ''))}",
        f"requires-python = {json.dumps(meta['requires-python'])}",
        f"license = {json.dumps(meta['license'])}",
        f"dependencies = {_toml_list(requirements(project, image))}",
        "",
        "[project.scripts]",
        *(
            f"{json.dumps(name)} = {json.dumps(target)}"
            for name, target in scripts(project, image).items()
        ),
        "",
        "[tool.setuptools]",
        f"packages = {_toml_list(list(entry['packages']))}",
    ]
    if entry.get("modules"):
        lines.append(f"py-modules = {_toml_list(list(entry['modules']))}")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--pyproject-file", type=Path, default=Path("pyproject.toml"))
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--requirements", action="store_true")
    what.add_argument("--pyproject", action="store_true")
    args = parser.parse_args(argv)
    try:
        project = load(args.pyproject_file)
        if args.requirements:
            print("\n".join(requirements(project, args.image)))
        else:
            print(pyproject(project, args.image), end="")
    except DistributionError as exc:
        print(f"distribution.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
