"""Pins for the test environments of other stacks, written from setup.cfg rather than kept by hand.

`floors` prints `name==floor` for every requirement that setup.cfg declares with a lower bound (install_requires
and the extras named, with the project's own extras that those name in turn), so `make test-floors` installs
exactly what setup.cfg promises users will work. `check` reads an environment's installed versions back against
a pins file and fails on any difference, so the log shows what was tested rather than what was asked for.

    python tests/stacks/pins.py floors --extras dev --skip torch > floors.txt
    .venv-floors/bin/python tests/stacks/pins.py check floors.txt
"""

from __future__ import annotations

import argparse
import configparser
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SETUP_CFG = Path(__file__).resolve().parents[2] / "setup.cfg"


def declared_requirements(setup_cfg: Path, extras: Iterable[str]) -> list[Requirement]:
    """install_requires plus the extras asked for, in setup.cfg's order, each name once. An extra that names
    the project's own extras (``rerankforge[data]``) brings theirs in its place, as pip resolves it."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg, encoding="utf-8")
    project = canonicalize_name(parser.get("metadata", "name", fallback=""))
    expanded: set[str] = set()

    def requirements(text: str) -> list[Requirement]:
        found = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            requirement = Requirement(line)
            if project and canonicalize_name(requirement.name) == project:
                for extra in sorted(requirement.extras):  # a set: sorted, so every run prints one order
                    found += of_extra(extra)
            else:
                found.append(requirement)
        return found

    def of_extra(extra: str) -> list[Requirement]:
        if not parser.has_option("options.extras_require", extra):
            raise SystemExit(f"{setup_cfg}: no extra named {extra!r} in [options.extras_require]")
        if extra in expanded:
            return []
        expanded.add(extra)
        return requirements(parser.get("options.extras_require", extra))

    declared = requirements(parser.get("options", "install_requires"))
    for extra in extras:
        declared += of_extra(extra)
    seen: dict[str, Requirement] = {}
    for requirement in declared:
        seen.setdefault(canonicalize_name(requirement.name), requirement)
    return list(seen.values())


def floor_of(requirement: Requirement) -> str:
    """The version a `>=` (or `==`, `~=`) bound names; a requirement without one has no floor to test."""
    for specifier in requirement.specifier:
        if specifier.operator in (">=", "==", "~="):
            return specifier.version
    raise SystemExit(f"{SETUP_CFG.name}: {requirement} declares no lower bound: give it one (>=)")


def floor_pins(setup_cfg: Path, extras: Iterable[str], skip: Iterable[str]) -> list[str]:
    skipped = {canonicalize_name(name) for name in skip}
    return [
        f"{requirement.name}=={floor_of(requirement)}"
        for requirement in declared_requirements(setup_cfg, extras)
        if canonicalize_name(requirement.name) not in skipped
    ]


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a pins file (comments and blank lines ignored)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            requirement = Requirement(text)
            (specifier,) = requirement.specifier
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def check_installed(pins: dict[str, str]) -> list[str]:
    """One line per pin: the installed version beside the pinned one; mismatches start with 'MISMATCH'."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    lines = []
    for name, pinned in pins.items():
        try:
            found = version(name)
        except PackageNotFoundError:
            found = "not installed"
        same = found != "not installed" and Version(found) == Version(pinned)
        lines.append(f"{'ok      ' if same else 'MISMATCH'} {name} {found} (pinned {pinned})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    floors = verbs.add_parser("floors", help="print name==floor for setup.cfg's requirements")
    floors.add_argument("--extras", nargs="*", default=[], help="extras whose requirements are pinned too")
    floors.add_argument("--skip", nargs="*", default=[], help="names left out (installed another way)")
    floors.add_argument("--setup-cfg", type=Path, default=SETUP_CFG)
    check = verbs.add_parser("check", help="compare this environment's versions with a pins file")
    check.add_argument("pins", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.verb == "floors":
        print("\n".join(floor_pins(args.setup_cfg, args.extras, args.skip)))
        return 0
    pins: dict[str, str] = {}
    for path in args.pins:
        pins.update(read_pins(path))
    lines = check_installed(pins)
    print("\n".join(lines))
    return 1 if any(line.startswith("MISMATCH") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
