"""Holds the development environment to its lock: checks `.venv` against it, writes it, shows what a refresh changed.

A lock here is a pip constraints file of exact pins, one `name==version` a line, names normalized (PEP 503),
sorted; `#` starts a comment. `lock/dev.txt` lists every distribution in `.venv` except the project itself;
`lock/build.txt` lists the build backend that pip uses to install the project in editable mode; `lock/vllm.txt`
lists every distribution in `.venv-vllm`, the real vLLM of the end-to-end tests.

Run it with the environment's own interpreter (`-P` keeps `scripts/` off `sys.path`):

    .venv/bin/python -P scripts/check_lock.py lock/dev.txt               # exit 1, listing every difference
    .venv/bin/python -P scripts/check_lock.py lock/dev.txt --extraneous  # installed but not locked, one a line
    .venv/bin/python -P scripts/check_lock.py --write lock/dev.txt       # this environment becomes the lock
    python3 -P scripts/check_lock.py --from-report REPORT --write lock/build.txt   # from `pip install --report`
    python3 -P scripts/check_lock.py --compare OLD NEW                   # what changed between two locks

Only the standard library is used: the checker must run in an environment that may be broken or half-installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import re
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def normalize(name: str) -> str:
    """PEP 503's normalized project name: `Foo_Bar.baz` and `foo-bar-baz` are the same project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_name(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The normalized name of this project, which the lock leaves out (it is installed from the work tree)."""
    with pyproject.open("rb") as handle:
        return normalize(tomllib.load(handle)["project"]["name"])


def read_lock(path: Path) -> dict[str, str]:
    """
    The pins of a lock file, by normalized name.

    :raises ValueError: On a line that is not an exact pin (a range would not lock anything), or a name pinned twice.
    """
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: not an exact pin `name==version`: {raw.strip()!r}")
        name = normalize(match[1])
        if name in pins:
            raise ValueError(f"{path}:{number}: {name} is pinned twice")
        pins[name] = match[2]
    return pins


def format_lock(pins: dict[str, str], header: Sequence[str] = ()) -> str:
    """The text of a lock: the header as comments, then the pins sorted by name."""
    lines = [f"# {line}".rstrip() for line in header]
    lines += [f"{name}=={pins[name]}" for name in sorted(pins)]
    return "\n".join(lines) + "\n"


def installed(paths: Sequence[str] | None = None, exclude: Iterable[str] = ()) -> dict[str, list[str]]:
    """
    The distributions on `paths` (default: this interpreter's `sys.path`), as normalized name -> versions.

    A name with two versions means two metadata folders for one project (a half-done install or uninstall).
    """
    skip = {normalize(name) for name in exclude}
    found: dict[str, list[str]] = {}
    seen: set[tuple[str, str, Path]] = set()
    search = list(sys.path if paths is None else paths)
    for dist in importlib.metadata.distributions(path=search):
        name = dist.metadata["Name"]
        if not name:  # a metadata folder without a name: nothing pip would list
            continue
        key = normalize(name)
        # The same folder reached through two entries of sys.path (a symlinked lib64, say) is one install.
        place = (key, dist.version, Path(str(dist.locate_file(""))).resolve())
        if key in skip or place in seen:
            continue
        seen.add(place)
        found.setdefault(key, []).append(dist.version)
    return found


@dataclass
class Differences:
    """How an environment (or a newer lock) differs from a lock."""

    missing: dict[str, str] = field(default_factory=dict)  # locked, not installed: name -> locked version
    extraneous: dict[str, str] = field(default_factory=dict)  # installed, not locked: name -> installed version
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (locked, installed)
    duplicated: dict[str, list[str]] = field(default_factory=dict)  # name -> the versions installed side by side

    def __bool__(self) -> bool:
        return bool(self.missing or self.extraneous or self.changed or self.duplicated)

    def lines(self) -> list[str]:
        """One line per difference between a lock and an environment, sorted by name."""
        out = []
        for name in sorted({*self.missing, *self.extraneous, *self.changed, *self.duplicated}):
            if name in self.duplicated:
                out.append(f"  {name}: installed several times ({', '.join(self.duplicated[name])})")
            elif name in self.missing:
                out.append(f"  {name}: locked {self.missing[name]}, not installed")
            elif name in self.extraneous:
                out.append(f"  {name}: installed {self.extraneous[name]}, not in the lock")
            else:
                locked, actual = self.changed[name]
                out.append(f"  {name}: locked {locked}, installed {actual}")
        return out

    def changes(self) -> list[str]:
        """One line per difference between an old lock and a new one (compared as lock and environment)."""
        out = []
        for name in sorted({*self.missing, *self.extraneous, *self.changed}):
            if name in self.missing:
                out.append(f"  {name} {self.missing[name]}: removed")
            elif name in self.extraneous:
                out.append(f"  {name} {self.extraneous[name]}: added")
            else:
                old, new = self.changed[name]
                out.append(f"  {name}: {old} -> {new}")
        return out


def compare(lock: dict[str, str], environment: dict[str, list[str]]) -> Differences:
    """Compares pins with what is installed, by normalized name and exact version string."""
    diff = Differences()
    for name, versions in environment.items():
        if len(versions) > 1:
            diff.duplicated[name] = sorted(versions)
        elif name not in lock:
            diff.extraneous[name] = versions[0]
        elif versions[0] != lock[name]:
            diff.changed[name] = (lock[name], versions[0])
    for name, version in lock.items():
        if name not in environment:
            diff.missing[name] = version
    return diff


def pins_from_report(report: Path) -> dict[str, str]:
    """What a `pip install --dry-run --ignore-installed --report FILE ...` would install, as pins."""
    data = json.loads(report.read_text())
    return {normalize(item["metadata"]["name"]): item["metadata"]["version"] for item in data["install"]}


#: What each lock holds, for its header, by the lock's file name.
_WHAT = {
    "build": ["The build backend (build-system.requires) that scripts/setup.sh builds the project with."],
    "dev": [
        "Every distribution in .venv but the project: scripts/setup.sh installs exactly these,",
        "and fails when .venv differs.",
    ],
    "vllm": [
        "Every distribution in .venv-vllm (vLLM's CPU build, the engine of tests/e2e/test_vllm.py):",
        "scripts/setup-vllm.sh installs exactly these, and fails when .venv-vllm differs.",
    ],
}


def _header(lock: Path) -> list[str]:
    what = _WHAT.get(lock.stem, [])
    version = ".".join(map(str, sys.version_info[:3]))
    return [
        "Written by scripts/check_lock.py (run by scripts/refresh-lock.sh); do not edit by hand.",
        *what,
        f"Resolved with CPython {version} on {sys.platform} {platform.machine()}.",
        "Refresh: bash scripts/refresh-lock.sh",
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("lock", nargs="?", type=Path, help="the lock to check this environment against")
    parser.add_argument("--extraneous", action="store_true", help="print the installed names the lock does not list")
    parser.add_argument("--quiet", "-q", action="store_true", help="no output, only the exit status")
    parser.add_argument("--write", type=Path, metavar="LOCK", help="write LOCK from this environment")
    parser.add_argument("--from-report", type=Path, metavar="REPORT", help="with --write: pins from a pip report")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"), help="list what NEW changes in OLD")
    args = parser.parse_args(argv)

    if args.compare:
        old, new = (read_lock(path) for path in args.compare)
        diff = compare(old, {name: [version] for name, version in new.items()})
        for line in diff.changes():
            print(line)
        if not diff:
            print("  no change")
        return 0
    if args.write:
        if args.from_report:
            pins = pins_from_report(args.from_report)
        else:
            versions = installed(exclude=[project_name()])
            doubled = [name for name, found in versions.items() if len(found) > 1]
            if doubled:
                print(f"error: installed several times: {', '.join(sorted(doubled))}", file=sys.stderr)
                return 1
            pins = {name: found[0] for name, found in versions.items()}
        args.write.write_text(format_lock(pins, _header(args.write)))
        return 0
    if args.lock is None:
        parser.error("give a LOCK to check, or --write / --compare")

    diff = compare(read_lock(args.lock), installed(exclude=[project_name()]))
    if args.extraneous:
        for name in sorted(diff.extraneous):
            print(name)
        return 0
    if not diff:
        return 0
    if not args.quiet:
        print(f"error: {sys.prefix} differs from {args.lock}:", file=sys.stderr)
        print("\n".join(diff.lines()), file=sys.stderr)
        venv = Path(sys.prefix).name
        print(
            f"Run `bash scripts/setup.sh` to install the lock (if that fails too: rm -rf {venv}, then run it again).",
            file=sys.stderr,
        )
    return 1


if __name__ == "__main__":
    sys.exit(main())
