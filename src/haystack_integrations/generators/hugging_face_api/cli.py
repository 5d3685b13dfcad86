"""
Command line: `hf-api-generate`.

- `hf-api-generate "prompt" --url http://localhost:8080` streams one reply to the terminal;
- `hf-api-generate "prompt" --pipeline pipeline.yaml` runs a saved pipeline with query-time parameters;
- `hf-api-generate --batch prompts.jsonl --output replies.jsonl` answers many prompts concurrently and
  resumes after an interruption: what is answered is skipped, what failed is tried again.

Failures are reported in one or two lines on stderr (`error: ...`, then `hint: ...` saying what to check);
`--verbose` prints the traceback first. Exit codes: 0 success, 1 a failure at run time (the server, a file,
a prompt of the batch), 2 a usage error (argparse's convention), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from haystack.core.errors import PipelineRuntimeError
from haystack.dataclasses import StreamingChunk
from haystack.utils import Secret

from ._config import HFGenerationAPIType, check_server_url
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    EndpointNotReadyError,
    EndpointPausedError,
    HuggingFaceAPIError,
    NotFoundError,
    OverloadedError,
    ProviderResolutionError,
    RedirectError,
    ServerError,
)
from .generator import HuggingFaceAPIGenerator

_NAME = "haystack_integrations.generators.hugging_face_api.HuggingFaceAPIGenerator"
# The package's logger: records from its children (transport, retries ...) reach handlers attached here.
_LOGGER = "haystack_integrations.generators.hugging_face_api"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # what argparse uses
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

_MAX_MESSAGE = 600


class CLIError(Exception):
    """A failure the user can act on: `message` says what went wrong, `hint` what to check."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def _json_object(text: str) -> dict[str, Any]:
    """argparse type of `--generation-kwargs`: a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"top_k\": 10}}', got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-api-generate",
        description="Generate text with HuggingFaceAPIGenerator (TGI, OpenAI-compatible servers, Inference "
        "Endpoints and Inference Providers).",
        epilog="Exit codes: 0 success, 1 failure at run time (server, file, failed prompts), 2 usage error, "
        "130 interrupted.",
    )
    parser.add_argument("prompt", nargs="?", help="the prompt (omit with --batch)")
    target = parser.add_argument_group("target")
    target.add_argument(
        "--api-type",
        default=None,
        choices=[t.value for t in HFGenerationAPIType],
        help="default: text_generation_inference with --url, serverless_inference_api with --model alone",
    )
    target.add_argument("--url", help="server URL (TGI, vLLM, an Inference Endpoint ...)")
    target.add_argument("--model", help="Hub model id (serverless), or the model name to request from --url")
    target.add_argument("--provider", help="Inference Provider for serverless (default: auto)")
    target.add_argument(
        "--protocol", choices=["auto", "tgi", "completions", "chat"], help="wire protocol (default: auto)"
    )
    target.add_argument("--timeout", type=float, help="connect and read timeout in seconds")
    target.add_argument(
        "--token-env",
        metavar="VAR",
        help="send the token held by this environment variable to --url (e.g. TGI's --api-key); by default "
        "HF_TOKEN / HF_API_TOKEN, sent to Hugging Face hosts only",
    )
    target.add_argument("--pipeline", type=Path, help="run this saved pipeline (YAML) instead of a single generator")
    target.add_argument("--component", help="with --pipeline: the generator's name (default: the only one)")
    generation = parser.add_argument_group("generation")
    generation.add_argument("--max-new-tokens", type=int, help="maximum tokens to generate")
    generation.add_argument("--temperature", type=float)
    generation.add_argument("--seed", type=int)
    generation.add_argument(
        "--generation-kwargs", type=_json_object, default={}, metavar="JSON", help="e.g. '{\"top_k\": 10}'"
    )
    generation.add_argument(
        "--stop",
        action="append",
        default=None,
        type=_unescape,
        metavar="WORD",
        help=r"a stop word (repeatable); \n, \t, \r and \\ stand for a newline, a tab, a carriage return, a backslash",
    )
    generation.add_argument("--no-stream", action="store_true", help="print the reply at the end instead of streaming")
    generation.add_argument("--json", action="store_true", help="print the result (replies and meta) as JSON")
    batch = parser.add_argument_group("batch")
    batch.add_argument(
        "--batch", type=Path, metavar="IN.jsonl", help='prompts, one per line: {"id": ..., "prompt": ...}'
    )
    batch.add_argument("--output", type=Path, metavar="OUT.jsonl", help="replies, one per line (resumable)")
    batch.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    batch.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the generator's warnings (retries ...) as they happen, and the traceback of a failure",
    )
    return parser


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def _unescape(word: str) -> str:
    r"""`--stop '\n'` means a newline: shells pass the two characters, as they do for printf's escapes."""
    return re.sub(r"\\([ntr\\])", lambda match: _ESCAPES[match.group(1)], word)


def _generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = dict(args.generation_kwargs)
    for key in ("max_new_tokens", "temperature", "seed"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return kwargs


#: The generator's own default: HF_TOKEN / HF_API_TOKEN, for Hugging Face hosts only.
_DEFAULT_TOKEN = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False)


def _generator(args: argparse.Namespace, parser: argparse.ArgumentParser) -> HuggingFaceAPIGenerator:
    if not args.url and not args.model:
        parser.error("give --url (a server) or --model (Inference Providers), or --pipeline")
    if args.url:
        advice = "export it as MY_TOKEN and pass --token-env MY_TOKEN (a 'Basic <base64>' value is sent as it is)"
        check_server_url(args.url, "--url", advice)
    api_type = args.api_type or ("text_generation_inference" if args.url else "serverless_inference_api")
    token = Secret.from_env_var(args.token_env) if args.token_env else _DEFAULT_TOKEN
    api_params: dict[str, Any] = {
        key: value
        for key, value in {
            "url": args.url,
            "model": args.model,
            "provider": args.provider,
            "protocol": args.protocol,
            "timeout": args.timeout,
        }.items()
        if value is not None
    }
    return HuggingFaceAPIGenerator(api_type=api_type, api_params=api_params, token=token, stop_words=args.stop)


class _Printer:
    """The streaming callback of a single prompt: prints each chunk, and remembers whether a line is open."""

    def __init__(self) -> None:
        self.printed = False

    def __call__(self, chunk: StreamingChunk) -> None:
        if chunk.content:
            self.printed = True
        print(chunk.content, end="", flush=True)


def _run_one(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    printer = None if args.no_stream or args.json else _Printer()
    kwargs = _generation_kwargs(args)
    try:
        if args.pipeline:
            result = _run_pipeline(args, parser, kwargs, printer)
        else:
            with _generator(args, parser) as generator:
                result = generator.run(args.prompt, streaming_callback=printer, generation_kwargs=kwargs or None)
    except BaseException:
        if printer is not None and printer.printed:
            print(flush=True)  # end the partial reply's line before the error is reported
        raise
    if args.json:
        print(json.dumps(result, ensure_ascii=False, default=str))
    elif printer is None:
        print(result["replies"][0])
    else:
        print()
    return EXIT_OK


def _load_pipeline(path: Path) -> Any:
    from haystack import Pipeline

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CLIError(f"cannot read --pipeline {path}: {_reason(error)}") from error
    try:
        return Pipeline.loads(text)
    except Exception as error:  # YAML syntax, unknown component type, bad init parameters ...
        raise CLIError(
            f"--pipeline {path} is not a pipeline Haystack can load: {_reason(error)}",
            "check the file is a pipeline saved by Haystack (Pipeline.dumps) and its component types are installed",
        ) from error


def _run_pipeline(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    kwargs: dict[str, Any],
    callback: Callable[[StreamingChunk], None] | None,
) -> dict[str, Any]:
    if args.stop:
        parser.error("--stop does not apply to --pipeline: stop words are part of the saved component")
    pipeline = _load_pipeline(args.pipeline)
    names = [name for name, data in pipeline.to_dict()["components"].items() if data["type"] == _NAME]
    name = args.component or (names[0] if len(names) == 1 else None)
    if name is None:
        parser.error(f"--pipeline has {len(names)} HuggingFaceAPIGenerator components {names}; choose with --component")
    inputs: dict[str, Any] = {"prompt": args.prompt}
    if kwargs:
        inputs["generation_kwargs"] = kwargs
    if callback is not None:
        inputs["streaming_callback"] = callback
    output: dict[str, Any] = pipeline.run({name: inputs})[name]
    return output


# --- batch ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One prompt of a batch. `key` is the id as text, to match output records; `id` is kept as given."""

    key: str
    id: Any
    prompt: str
    generation_kwargs: dict[str, Any] | None


def _read_prompts(path: Path) -> list[BatchItem]:
    """Reads `{"id", "prompt", "generation_kwargs"?}` lines (or bare JSON strings); ids default to line numbers."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CLIError(f"cannot read --batch {path}: {_reason(error)}") from error
    prompts: list[BatchItem] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as error:
            raise CLIError(f"{path}:{number}: not JSON ({error})", "each line is one JSON object or string") from None
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise CLIError(f'{path}:{number}: expected {{"prompt": "..."}} or a JSON string')
        kwargs = item.get("generation_kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise CLIError(f"{path}:{number}: generation_kwargs must be a JSON object, got {json.dumps(kwargs)}")
        given_id = item.get("id", number)
        key = str(given_id)
        if key in seen:
            raise CLIError(f"{path}:{number}: duplicate id {key!r}")
        seen.add(key)
        prompts.append(BatchItem(key, given_id, item["prompt"], kwargs))
    return prompts


def _read_done(path: Path) -> dict[str, dict[str, Any]]:
    """The latest record per id in an output file. A torn last line (killed mid-write) is dropped."""
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CLIError(f"cannot read --output {path}: {_reason(error)}") from error
    good: list[str] = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "id" in record:
            records[str(record["id"])] = record
            good.append(line)
    _rewrite(path, good)
    return records


def _rewrite(path: Path, lines: Sequence[str]) -> None:
    """Replaces the file atomically: an interruption leaves either the old or the new file."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        raise CLIError(f"cannot write --output {path}: {_reason(error)}") from error


class ScaleUpProgress(logging.Handler):
    """
    Shows on the batch progress bar that an Inference Endpoint is scaling up.

    The package's logger emits WARNING records carrying `hf_scale_up` ("waiting", "ready" or "gave_up") and
    `hf_scale_up_seconds` (for "waiting": the longest it will wait). "waiting" sets the bar's postfix,
    "ready" and "gave_up" clear it; other records are ignored.
    """

    def __init__(self, progress: Any) -> None:
        super().__init__(level=logging.DEBUG)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        state = getattr(record, "hf_scale_up", None)
        if state == "waiting":
            seconds = getattr(record, "hf_scale_up_seconds", None)
            text = "endpoint scaling up"
            if isinstance(seconds, int | float):
                text += f", waiting up to {seconds:.0f} s"
            self.progress.set_postfix_str(text)
        elif state in {"ready", "gave_up"}:
            self.progress.set_postfix_str("")


@contextlib.contextmanager
def scale_up_progress(progress: Any) -> Iterator[ScaleUpProgress]:
    """Attaches a `ScaleUpProgress` to the package's logger for the duration of the block."""
    handler = ScaleUpProgress(progress)
    logger = logging.getLogger(_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@dataclass(slots=True)
class _BatchOutcome:
    failures: int = 0
    first_error: BaseException | None = None


async def _run_batch_async(
    generator: HuggingFaceAPIGenerator,
    todo: list[BatchItem],
    out: TextIO,
    concurrency: int,
    base_kwargs: dict[str, Any],
    progress: Any,
) -> _BatchOutcome:
    semaphore = asyncio.Semaphore(concurrency)
    outcome = _BatchOutcome()

    async def answer(item: BatchItem) -> None:
        async with semaphore:
            try:
                kwargs = {**base_kwargs, **(item.generation_kwargs or {})}
                result = await generator.run_async(item.prompt, generation_kwargs=kwargs)
                record = {"id": item.id, "reply": result["replies"][0], "meta": result["meta"][0]}
            except Exception as error:  # every failure is recorded, and retried by the next run
                outcome.failures += 1
                outcome.first_error = outcome.first_error or error
                record = {"id": item.id, "error": {"type": type(error).__name__, "message": str(error)}}
        # One write per complete line, flushed: an interruption tears at most the line being written.
        out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        out.flush()
        progress.update(1)

    try:
        await asyncio.gather(*(answer(item) for item in todo))
    finally:
        await generator.aclose()
    return outcome


def _run_batch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.output is None:
        parser.error("--batch needs --output")
    if args.concurrency < 1:
        parser.error("--concurrency must be >= 1")
    if args.pipeline:
        parser.error("--batch runs one generator; give --url or --model rather than --pipeline")
    prompts = _read_prompts(args.batch)
    done = _read_done(args.output)
    todo = [item for item in prompts if "reply" not in done.get(item.key, {})]
    generator = _generator(args, parser)
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        out = args.output.open("a", encoding="utf-8")
    except OSError as error:
        raise CLIError(f"cannot write --output {args.output}: {_reason(error)}") from error
    with (
        out,
        tqdm(total=len(prompts), initial=len(prompts) - len(todo), disable=args.no_progress, unit="prompt") as progress,
        # Log lines (a warning, say) are printed above the bar instead of through it.
        logging_redirect_tqdm() if not args.no_progress else contextlib.nullcontext(),
        scale_up_progress(progress),
    ):
        outcome = asyncio.run(
            _run_batch_async(generator, todo, out, args.concurrency, _generation_kwargs(args), progress)
        )
    # Complete pass: leave one line per prompt, in input order.
    records = _read_done(args.output)
    _rewrite(args.output, [json.dumps(records[i.key], ensure_ascii=False) for i in prompts if i.key in records])
    answered = sum(1 for item in prompts if "reply" in records.get(item.key, {}))
    summary = f"{answered}/{len(prompts)} answered, {outcome.failures} failed"
    if outcome.first_error is None:
        print(summary, file=sys.stderr)
        return EXIT_OK
    print(f"{summary} (rerun the command to retry them; {args.output} has each error)", file=sys.stderr)
    _report(outcome.first_error, verbose=args.verbose, prefix="first error: ")
    return EXIT_FAILURE


# --- reporting failures ---------------------------------------------------------------------------


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 1] + "…"


def _reason(error: BaseException) -> str:
    """The short reason of an OS or decoding error (`No such file or directory`), else its message."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return _one_line(str(error))


def _hint(error: BaseException) -> str | None:
    """What to check for a failure on the wire."""
    if isinstance(error, APITimeoutError):
        return "the server took longer than the timeout: check its load, or raise --timeout"
    if isinstance(error, APIConnectionError):
        return "check that the server is running and reachable at --url (or the pipeline's url)"
    if isinstance(error, AuthenticationError):
        return (
            "check the token: HF_TOKEN / HF_API_TOKEN (sent to Hugging Face hosts only), or --token-env VAR for "
            "another server, and its permissions"
        )
    if isinstance(error, RedirectError):
        return "set --url to the address the redirect points to (redirects are never followed)"
    if isinstance(error, EndpointPausedError):
        return "resume the Inference Endpoint (its page on huggingface.co/endpoints), then run this again"
    if isinstance(error, EndpointNotReadyError):
        return "the endpoint is still starting: run this again in a while (api_params['scale_up_timeout'] waits longer)"
    if isinstance(error, NotFoundError):
        return "check --url (the server's base URL) and --model"
    if isinstance(error, ProviderResolutionError):
        return "check --model (org/name), --provider and HF_TOKEN"
    if isinstance(error, OverloadedError | ServerError):
        return "the server is busy or failing: try again later, or lower --concurrency"
    if isinstance(error, APIStatusError):
        return "the server refused the request: check the parameters it names"
    return None


def _describe(error: BaseException) -> tuple[str, str | None]:
    """(message, hint) for a failure. Only our own messages are printed: they never contain a token."""
    if isinstance(error, CLIError):
        return error.message, error.hint
    # A pipeline wraps its component's exception (haystack's PipelineRuntimeError): report the component's.
    if isinstance(error, PipelineRuntimeError) and error.__cause__ is not None:
        return _describe(error.__cause__)
    if isinstance(error, HuggingFaceAPIError):
        return str(error), _hint(error)
    if isinstance(error, ValueError | TypeError):  # bad parameters, named by the generator's message
        return str(error), None
    if isinstance(error, OSError):
        return f"{error.filename + ': ' if error.filename else ''}{_reason(error)}", None
    return f"unexpected {type(error).__name__}", "rerun with --verbose for the traceback"


def _report(error: BaseException, *, verbose: bool, prefix: str = "error: ") -> None:
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    message, hint = _describe(error)
    print(f"{prefix}{_one_line(message)}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


class _ScaleUpNotes(logging.Handler):
    """Prints an Inference Endpoint's scale-up lines (`hf_scale_up` records) to stderr: a long wait is explained."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "hf_scale_up", None) is not None:
            print(f"note: {_one_line(record.getMessage())}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _package_logs(verbose: bool, notes: bool) -> Iterator[None]:
    """
    Without --verbose, the generator's own log records (one warning per retry ...) are not printed, except the
    scale-up lines when `notes` is true (a batch with a progress bar shows those on the bar instead).

    They are still created, so handlers on the package's logger (the batch's scale-up display) receive them.
    """
    if verbose:
        yield
        return
    logger = logging.getLogger(_LOGGER)
    # A handler, so that Python's last-resort handler does not print the records either.
    handler: logging.Handler = _ScaleUpNotes() if notes else logging.NullHandler()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.propagate = propagate
        logger.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `hf-api-generate`; returns the exit code (argparse exits with 2 on usage errors)."""
    parser = _parser()
    args = parser.parse_args(argv)
    with _package_logs(args.verbose, notes=not args.batch or args.no_progress):
        return _main(args, parser)


def _main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        if args.batch:
            return _run_batch(args, parser)
        if not args.prompt:
            parser.error("give a prompt, or --batch")
        return _run_one(args, parser)
    except KeyboardInterrupt:
        resume = " (rerun the same command to resume the batch)" if args.batch else ""
        print(f"interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        _report(error, verbose=args.verbose)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
