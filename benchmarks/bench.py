"""
The benchmark orchestrator: starts the fake server and one process per client, measures them in
interleaved blocks, then the import times, the peak RSS and the local model, and writes
benchmarks/results.json, BENCHMARKS.md and benchmarks/chart.png (through report.py).

Started by benchmarks/run.sh, which prepares the venvs; see BENCHMARKS.md for the command.

Why interleaved blocks: absolute times on these shared machines drift by 1.5x within minutes, so every
figure is taken in small blocks where all clients run one after the other (in a new random order each
block), and each client is reported as a ratio to its reference measured in the same block: raw urllib3
for sync clients, raw aiohttp for async ones, on the same protocol.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import re
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLIENT_CPU, SERVER_CPU = 0, 1
STREAM_TOKENS = 1000  # client.STREAM_TOKENS; kept in sync by the check step
MAX_WINDOW_ERRORS = 3


@dataclass
class Variant:
    """One client configuration, run in its own process."""

    key: str
    label: str
    peer: str  # client.py --peer
    protocol: str  # tgi | completions
    venv: str  # main | hfhub | haystack2 | langchain
    is_async: bool
    #: Runs ours from a copy of src/ with benchmarks/proposals/*.patch applied, in the same blocks as the rest.
    proposal: bool = False
    #: Imports Haystack before measuring (client.py --with-haystack). The reference floors do, because every
    #: Haystack component runs beside Haystack's heap, which CPython's garbage collector scans (see analysis.md).
    with_haystack: bool = False

    @property
    def ref(self) -> str:
        """The reference floor: raw urllib3 for sync clients, raw aiohttp for async ones, same protocol."""
        return f"{'aiohttp' if self.is_async else 'urllib3'}-{self.protocol}"


VARIANTS = [
    # the references
    Variant("urllib3-tgi", "raw urllib3 (TGI), beside Haystack", "urllib3", "tgi", "main", False, with_haystack=True),
    Variant(
        "urllib3-completions",
        "raw urllib3 (completions), beside Haystack",
        "urllib3",
        "completions",
        "main",
        False,
        with_haystack=True,
    ),
    Variant("aiohttp-tgi", "raw aiohttp (TGI), beside Haystack", "aiohttp", "tgi", "main", True, with_haystack=True),
    Variant(
        "aiohttp-completions",
        "raw aiohttp (completions), beside Haystack",
        "aiohttp",
        "completions",
        "main",
        True,
        with_haystack=True,
    ),
    # the same floors in a bare interpreter: what the raw libraries cost without Haystack's heap
    Variant("urllib3-tgi-bare", "raw urllib3 (TGI), bare interpreter", "urllib3", "tgi", "main", False),
    Variant("aiohttp-tgi-bare", "raw aiohttp (TGI), bare interpreter", "aiohttp", "tgi", "main", True),
    # the other floors: what the generator used before, and what huggingface_hub 2.x runs on
    Variant("httpx-tgi", "raw httpx (TGI)", "httpx", "tgi", "main", False),
    Variant("httpx-async-tgi", "raw httpx AsyncClient (TGI)", "httpx_async", "tgi", "main", True),
    Variant("httpx2-tgi", "raw httpx2 (TGI)", "httpx2", "tgi", "main", False),
    Variant("httpx2-async-tgi", "raw httpx2 AsyncClient (TGI)", "httpx2_async", "tgi", "main", True),
    # ours
    Variant("ours-tgi", "ours run (TGI)", "ours", "tgi", "main", False),
    Variant("ours-tgi-async", "ours run_async (TGI)", "ours_async", "tgi", "main", True),
    Variant("ours-completions", "ours run (completions)", "ours", "completions", "main", False),
    Variant("ours-completions-async", "ours run_async (completions)", "ours_async", "completions", "main", True),
    # the peers (all speak TGI's protocol)
    Variant("hfhub", "huggingface_hub 2.4 InferenceClient", "hfhub", "tgi", "hfhub", False),
    Variant("hfhub-async", "huggingface_hub 2.4 AsyncInferenceClient", "hfhub_async", "tgi", "hfhub", True),
    Variant("haystack2", "Haystack 2.31 HuggingFaceAPIGenerator", "haystack2", "tgi", "haystack2", False),
    Variant("langchain", "LangChain HuggingFaceEndpoint", "langchain", "tgi", "langchain", False),
    Variant("langchain-async", "LangChain HuggingFaceEndpoint (async)", "langchain_async", "tgi", "langchain", True),
]
PROPOSAL_VARIANTS = [
    Variant(v.key + "+patch", v.label + " + proposed patch", v.peer, v.protocol, v.venv, v.is_async, proposal=True)
    for v in VARIANTS
    if v.peer.startswith("ours")
]
# import_time.py peer -> venv
IMPORT_PEERS = {
    "urllib3": "main",
    "aiohttp": "main",
    "httpx": "main",
    "httpx2": "main",
    "ours": "main",
    "hfhub": "hfhub",
    "haystack2": "haystack2",
    "langchain": "langchain",
}


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {cpu})


def _cpus() -> tuple[int | None, int | None]:
    """(client cpu, server cpu), or no pinning on a one-core machine."""
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
        cpus = sorted(os.sched_getaffinity(0))
        return cpus[0], cpus[1]
    return None, None


def _env(pythonpath: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_API_TOKEN", "HF_HUB_OFFLINE")}
    # No telemetry calls from Haystack or huggingface_hub during the measurement.
    env.update({"HAYSTACK_TELEMETRY_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = pythonpath
    return env


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _core_jiffies(cpu: int | None) -> tuple[int, int, int] | None:
    """(busy, steal, total) clock ticks of one CPU since boot, from /proc/stat; all processes count."""
    if cpu is None:
        return None
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(x) for x in line.split()[1:]]
                idle = ticks[3] + ticks[4]  # idle + iowait
                steal = ticks[7] if len(ticks) > 7 else 0
                return sum(ticks) - idle - steal, steal, sum(ticks)
    except (OSError, ValueError):
        pass
    return None


def _core_share(before: tuple[int, int, int] | None, after: tuple[int, int, int] | None) -> dict[str, float]:
    if before is None or after is None or after[2] <= before[2]:
        return {}
    total = after[2] - before[2]
    return {"busy": (after[0] - before[0]) / total, "steal": (after[1] - before[1]) / total}


def _read_line(stream: IO[str], timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no answer in {timeout:.0f} s")
    line = stream.readline()
    if not line:
        raise EOFError("the process exited")
    return line


@dataclass
class Worker:
    variant: Variant
    process: subprocess.Popen[str]
    stderr_path: Path
    error: str | None = None
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def ask(self, command: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        answer = json.loads(_read_line(self.process.stdout, timeout))
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def fail(self, error: BaseException | str) -> None:
        tail = self.stderr_path.read_text(errors="replace")[-800:] if self.stderr_path.exists() else ""
        self.error = f"{error}".strip() + (f" | stderr: {tail.strip()}" if tail.strip() else "")
        self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write('{"op": "quit"}\n')
                self.process.stdin.flush()
                self.process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pythons = {
            "main": args.main_python,
            "tools": sys.executable,
            "hfhub": str(Path(args.venvs) / "hfhub" / "bin" / "python"),
            "haystack2": str(Path(args.venvs) / "haystack2" / "bin" / "python"),
            "langchain": str(Path(args.venvs) / "langchain" / "bin" / "python"),
        }
        self.client_cpu, self.server_cpu = _cpus()
        # --ours-src: a copy of src/ with a proposed change, found before the editable install.
        self.ours_path = str(Path(args.ours_src).resolve()) if args.ours_src else ""
        self.proposal_path = ""
        self.proposal_note = ""
        self.logs = Path(args.venvs).parent / "bench-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.server: subprocess.Popen[str] | None = None
        self.url = ""
        self.workers: list[Worker] = []
        self.window_errors: list[dict[str, Any]] = []
        self.rng = random.Random(args.seed)

    def prepare_proposal(self, patch: Path) -> bool:
        """Copies src/ (or --ours-src) and applies the proposed patch to the copy; False if it does not apply."""
        target = Path(self.args.venvs).parent / "bench-proposal"
        source = Path(self.ours_path) if self.ours_path else ROOT / "src"
        # GIT_CEILING_DIRECTORIES: the copy lies inside this repository, and inside a repository `git apply`
        # would silently skip paths outside the current folder; with it, git patches the copy as plain files.
        # GNU patch with some fuzz is the second try, for a src/ that moved on a little since the patch was made.
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(target.parent.resolve())}
        attempts = [
            ["git", "apply", str(patch.resolve())],
            ["patch", "-p1", "--forward", "--fuzz=3", "--no-backup-if-mismatch", "-i", str(patch.resolve())],
        ]
        errors = []
        for command in attempts:
            if shutil.which(command[0]) is None:
                continue
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target / "src", ignore=shutil.ignore_patterns("__pycache__"))
            before = _tree_digest(target / "src")
            done = subprocess.run(command, cwd=target, capture_output=True, text=True, env=env)
            if done.returncode == 0 and _tree_digest(target / "src") != before:
                self.proposal_path = str(target / "src")
                self.proposal_note = f"{patch.relative_to(ROOT)} applied to a copy of src/ ({command[0]})"
                return True
            errors.append(f"{command[0]}: {(done.stderr or done.stdout).strip()[:200] or 'changed nothing'}")
        self.proposal_note = f"{patch.name} does not apply to src/ (already applied?): " + "; ".join(errors)
        return False

    # --- processes --------------------------------------------------------------------------------

    def start_server(self) -> None:
        command = [sys.executable, str(HERE / "fake_server.py")]
        if self.server_cpu is not None:
            command += ["--cpu", str(self.server_cpu)]
        # stdin stays an open pipe: the server stops by itself if this process dies.
        self.server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
        assert self.server.stdout is not None
        port = int(_read_line(self.server.stdout, 30).split()[1])
        self.url = f"http://127.0.0.1:{port}"

    def set_interval(self, seconds: float) -> None:
        """How the fake server sends streams from now on: one event per `seconds`, or at once (0)."""
        assert self.server is not None
        assert self.server.stdin is not None
        assert self.server.stdout is not None
        self.server.stdin.write(f"interval {seconds}\n")
        self.server.stdin.flush()
        answer = _read_line(self.server.stdout, 10).strip()
        if answer != "OK":
            raise RuntimeError(f"the fake server answered {answer!r} to `interval`")

    def start_workers(self, variants: list[Variant]) -> None:
        for variant in variants:
            command = [self.pythons[variant.venv], str(HERE / "client.py"), "--peer", variant.peer]
            command += ["--url", self.url, "--protocol", variant.protocol]
            if variant.with_haystack:
                command.append("--with-haystack")
            if self.client_cpu is not None:
                command += ["--cpu", str(self.client_cpu)]
            stderr_path = self.logs / f"{variant.key}.stderr"
            with stderr_path.open("w") as stderr:
                path = self.proposal_path if variant.proposal else self.ours_path
                env = _env(path if variant.venv == "main" else "")
                process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
                )
            self.workers.append(Worker(variant, process, stderr_path))
        for worker in self.workers:  # they start (import, warm up) in parallel
            try:
                assert worker.process.stdout is not None
                json.loads(_read_line(worker.process.stdout, 300))
            except (TimeoutError, EOFError, ValueError) as error:
                worker.fail(error)
        self.check_replies()

    def check_replies(self) -> None:
        """Every client must return exactly the text the server generated, or its numbers mean nothing."""
        sys.path.insert(0, str(HERE))
        from fake_server import generated_text

        expected_call, expected_stream = generated_text(16), generated_text(STREAM_TOKENS)
        for worker in self.live():
            try:
                answer = worker.ask({"op": "check"})
            except (RuntimeError, TimeoutError, EOFError) as error:
                worker.fail(error)
                continue
            if answer["reply"] != expected_call or answer["streamed"] != expected_stream:
                worker.fail(f"wrong reply: {answer['reply'][:80]!r}, streamed {len(answer['streamed'])} characters")

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.error is None]

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(5)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    # --- measurements -----------------------------------------------------------------------------

    def blocks(self) -> dict[str, Any]:
        """
        The interleaved blocks: per figure, every live client once, in a new random order. Each window also
        records the fake server's CPU time, so the report can show that the server was never the bottleneck.
        """
        args = self.args
        ops = {
            "call": (args.calls, args.min_seconds),
            "stream": (args.streams, args.min_seconds),  # paced: one event per --interval
            "burst": (args.burst_streams, args.min_seconds),  # the same streams, sent at once
            "rps": (args.rps_requests, args.rps_seconds),
        }
        raw: dict[str, dict[str, list[dict[str, Any] | None]]] = {op: {} for op in ops}
        assert self.server is not None
        for block in range(args.blocks):
            started = time.perf_counter()
            for op, (n, seconds) in ops.items():
                self.set_interval(args.interval if op == "stream" else 0.0)
                order = self.live()
                self.rng.shuffle(order)
                for worker in order:
                    result = self.window(worker, op, n, seconds, block)
                    if result is not None:
                        raw[op].setdefault(worker.variant.key, [None] * args.blocks)[block] = result
            print(f"  block {block + 1}/{args.blocks}: {time.perf_counter() - started:.1f} s", flush=True)
        return raw

    def window(self, worker: Worker, op: str, n: int, seconds: float, block: int) -> dict[str, Any] | None:
        """
        One measurement window. A request that fails inside a live client (a peer's own bug, e.g. httpcore
        closing a connection under another thread's request) is recorded and the window retried once; the
        client is dropped after MAX_WINDOW_ERRORS such failures, or at once when it stops answering.
        """
        assert self.server is not None
        # Windows are bounded in time; an in-flight window also waits for the requests still in flight.
        timeout = 120 if op != "rps" else seconds + 45
        for attempt in range(2):
            server_before = _cpu_seconds(self.server.pid)
            cores_before = _core_jiffies(self.client_cpu), _core_jiffies(self.server_cpu)
            try:
                result = worker.ask({"op": op, "n": n, "seconds": seconds}, timeout=timeout)
            except RuntimeError as error:
                self.window_errors.append({"key": worker.variant.key, "op": op, "block": block, "error": f"{error}"})
                print(f"  {worker.variant.key} {op}: {error} ({'retrying' if attempt == 0 else 'skipped'})")
                if sum(e["key"] == worker.variant.key for e in self.window_errors) >= MAX_WINDOW_ERRORS:
                    worker.fail(f"{op}: {error} ({MAX_WINDOW_ERRORS} failed windows)")
                    return None
                continue
            except (TimeoutError, EOFError) as error:
                worker.fail(f"{op}: {error}")
                return None
            server_after = _cpu_seconds(self.server.pid)
            if server_before is not None and server_after is not None:
                result["server_cpu"] = server_after - server_before
            # How busy each core was, all processes counted: load from outside the benchmark shows up here.
            cores_after = _core_jiffies(self.client_cpu), _core_jiffies(self.server_cpu)
            result["client_core"] = _core_share(cores_before[0], cores_after[0])
            result["server_core"] = _core_share(cores_before[1], cores_after[1])
            return result
        return None

    def import_times(self) -> dict[str, Any]:
        """Fresh processes, round-robin over the peers so drift hits all of them alike."""
        samples: dict[str, list[dict[str, float]]] = {peer: [] for peer in IMPORT_PEERS}
        errors: dict[str, str] = {}
        for rep in range(self.args.import_reps + 1):  # the first round only warms the disk and .pyc caches
            for peer, venv in IMPORT_PEERS.items():
                if peer in errors:
                    continue
                command = [self.pythons[venv], str(HERE / "import_time.py"), peer]
                if self.client_cpu is not None:
                    command += ["--cpu", str(self.client_cpu)]
                env = _env(self.ours_path if venv == "main" else "")
                done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
                if done.returncode != 0:
                    errors[peer] = done.stderr[-500:]
                    continue
                if rep > 0:
                    samples[peer].append(json.loads(done.stdout.strip().splitlines()[-1]))
        return {"samples": samples, "errors": errors, "breakdown": self.import_breakdown()}

    def import_breakdown(self) -> list[dict[str, Any]]:
        """`python -X importtime`: the modules our package's import loads beyond `import haystack`."""
        code = "import haystack; import haystack_integrations.generators.hugging_face_api"
        command = [self.pythons["main"], "-X", "importtime", "-c", code]
        done = subprocess.run(command, capture_output=True, text=True, env=_env(self.ours_path))
        entries = []
        after_haystack = False
        for line in done.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
            if not match:
                continue
            self_us, cumulative_us, indent, name = int(match[1]), int(match[2]), len(match[3]), match[4]
            if after_haystack:
                entries.append(
                    {"module": name, "self_ms": self_us / 1000, "cum_ms": cumulative_us / 1000, "depth": indent // 2}
                )
            elif name == "haystack" and indent == 0:
                after_haystack = True
        return entries

    def peak_rss(self, variants: list[Variant]) -> dict[str, Any]:
        """A fresh process per client: set up, 1,000 calls, then ru_maxrss."""
        result: dict[str, Any] = {}
        for variant in variants:
            command = [self.pythons[variant.venv], str(HERE / "client.py"), "--peer", variant.peer]
            command += ["--url", self.url, "--protocol", variant.protocol, "--rss", str(self.args.rss_calls)]
            if variant.with_haystack:
                command.append("--with-haystack")
            if self.client_cpu is not None:
                command += ["--cpu", str(self.client_cpu)]
            env = _env(self.ours_path if variant.venv == "main" else "")
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
            if done.returncode == 0:
                result[variant.key] = json.loads(done.stdout.strip().splitlines()[-1])["maxrss_mb"]
            else:
                result[variant.key] = None
        return result

    def local_model(self) -> dict[str, Any]:
        if self.args.skip_local:
            return {"skipped": "--skip-local was given"}
        command = [self.pythons["main"], str(HERE / "local_model_bench.py"), "--reps", str(self.args.local_reps)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=_env(self.ours_path), timeout=600)
        except subprocess.TimeoutExpired:
            return {"skipped": "the local model benchmark did not finish in 600 s"}
        (self.logs / "local_model.stderr").write_text(done.stderr)
        lines = done.stdout.strip().splitlines()
        if not lines:
            return {"skipped": f"no output (exit {done.returncode}): {done.stderr[-400:]}"}
        return json.loads(lines[-1])


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def machine() -> dict[str, Any]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        info["model name"] = platform.processor()
    model = info.get("model name", "")
    if "cpu family" in info:
        model += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    if "hypervisor" in info.get("flags", "").split():
        model += ", virtual machine"
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory": memory, "os": platform.platform()}


def versions(pythons: dict[str, str]) -> dict[str, dict[str, str]]:
    """Package versions per venv, read with importlib.metadata inside each venv."""
    packages = {
        "main": [
            "haystack-ai",
            "hugging-face-api-generator-haystack",
            "urllib3",
            "aiohttp",
            "httpx",
            "httpx2",
            "transformers",
            "torch",
        ],
        "hfhub": ["huggingface_hub", "httpx2"],
        "haystack2": ["haystack-ai", "huggingface_hub", "httpx2"],
        "langchain": ["langchain-huggingface", "langchain-core", "huggingface_hub", "httpx"],
        "tools": ["uvloop", "matplotlib"],
    }
    found: dict[str, dict[str, str]] = {}
    for venv, names in packages.items():
        code = (
            "import json, sys, platform\nfrom importlib import metadata\nout = {'python': platform.python_version()}\n"
            f"for n in {names!r}:\n"
            "    try: out[n] = metadata.version(n)\n"
            "    except metadata.PackageNotFoundError: out[n] = 'not installed'\n"
            "print(json.dumps(out))"
        )
        done = subprocess.run([pythons[venv], "-c", code], capture_output=True, text=True)
        found[venv] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-200:]}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the client benchmarks and write BENCHMARKS.md.")
    parser.add_argument("--main-python", required=True, help="the project's venv python (haystack 3 + this package)")
    parser.add_argument("--venvs", required=True, help="folder holding the hfhub, haystack2 and langchain venvs")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--calls", type=int, default=150, help="one-piece calls per batch (16 tokens each)")
    parser.add_argument("--streams", type=int, default=1, help="paced 1,000-token streams per batch")
    parser.add_argument(
        "--interval", type=float, default=0.001, help="seconds between two events of a paced stream (~1.1 s a stream)"
    )
    parser.add_argument("--burst-streams", type=int, default=2, help="1,000-token streams sent at once, per batch")
    parser.add_argument(
        "--min-seconds", type=float, default=0.25, help="call and stream windows: batches until this long"
    )
    parser.add_argument("--rps-requests", type=int, default=100_000, help="at most this many requests per window")
    parser.add_argument(
        "--rps-seconds", type=float, default=0.8, help="in-flight window (64 threads sync, 256 tasks async)"
    )
    parser.add_argument("--import-reps", type=int, default=5)
    parser.add_argument("--rss-calls", type=int, default=1000)
    # The model server varies by ±25% from request to request on 2 cores: enough pairs for a stable median.
    parser.add_argument("--local-reps", type=int, default=8)
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a fast look (about 2.5 minutes): 2 blocks, shorter windows, 2 import samples, 300 calls for the "
        "RSS, no local model; explicit options still win",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated variant keys (their references are added), for quick checks"
    )
    parser.add_argument("--seed", type=int, default=20241125)
    parser.add_argument(
        "--proposal",
        default=str(HERE / "proposals" / "src-performance.patch"),
        help="a patch to src/ measured alongside (skipped when it does not apply); '' to skip",
    )
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--chart", default=str(HERE / "chart.png"))
    parser.add_argument(
        "--ours-src",
        default="",
        help="measure a copy of src/ (e.g. with a proposed change) instead of the installed package; "
        "give --out/--markdown/--chart elsewhere to keep the committed report",
    )
    args = parser.parse_args()
    if args.quick:
        given = {arg.split("=", 1)[0] for arg in sys.argv[1:] if arg.startswith("--")}
        quick = {"blocks": 2, "min_seconds": 0.15, "rps_seconds": 0.5, "import_reps": 2, "rss_calls": 300}
        for name, value in quick.items():
            if "--" + name.replace("_", "-") not in given:
                setattr(args, name, value)
        args.skip_local = True

    bench = Bench(args)
    candidates = VARIANTS
    if args.proposal and Path(args.proposal).exists() and bench.prepare_proposal(Path(args.proposal)):
        candidates = VARIANTS + PROPOSAL_VARIANTS
    wanted = set(args.only.split(",")) if args.only else set()
    wanted |= {v.ref for v in candidates if v.key in wanted}  # ratios need the references in the same blocks
    variants = [v for v in candidates if not wanted or v.key in wanted]
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "settings": vars(args)}
    results["machine"] = machine()
    results["versions"] = versions(bench.pythons)
    results["pinning"] = {"client_cpu": bench.client_cpu, "server_cpu": bench.server_cpu}
    results["variants"] = [vars(v) | {"ref": v.ref} for v in variants]
    results["proposal"] = bench.proposal_note
    began = time.perf_counter()
    try:
        if bench.client_cpu is not None:
            _pin(bench.client_cpu)  # the orchestrator only waits; keep it off the server's core
        bench.start_server()
        print(f"fake server at {bench.url}; starting {len(variants)} clients", flush=True)
        bench.start_workers(variants)
        gc.collect()
        print("interleaved blocks", flush=True)
        results["blocks"] = bench.blocks()
        results["errors"] = {w.variant.key: w.error for w in bench.workers if w.error}
        results["window_errors"] = bench.window_errors
        for worker in bench.workers:
            worker.stop()
        print("import times", flush=True)
        results["imports"] = bench.import_times()
        print("peak RSS", flush=True)
        results["rss"] = bench.peak_rss([v for v in variants if not v.proposal])
    finally:
        bench.stop_all()
    print("local model", flush=True)
    results["local_model"] = bench.local_model()
    results["duration_s"] = time.perf_counter() - began
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"results in {args.out} ({results['duration_s']:.0f} s)", flush=True)

    from report import write_report

    write_report(results, Path(args.markdown), Path(args.chart))


if __name__ == "__main__":
    main()
