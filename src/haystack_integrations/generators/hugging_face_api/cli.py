"""
Command line: `hf-api-generate`.

- `hf-api-generate "prompt" --url http://localhost:8080` streams one reply to the terminal (`-` reads the prompt
  from stdin);
- `hf-api-generate "prompt" --pipeline pipeline.yaml` runs a saved pipeline with query-time parameters;
- `hf-api-generate --batch prompts.jsonl --output replies.jsonl` answers many prompts concurrently and
  resumes after an interruption: what was answered for the same prompt with the same settings is skipped, the
  rest is asked (again).

`--url` repeated names replicas of one server (`api_params["url"]` becomes their list): each request goes to one
of them, as the generator's fleet decides. A batch keeps many prompts started (`--concurrency auto`) and lets
each replica's adaptive limit decide how many are in flight; its progress bar shows the replicas' figures.

Failures are reported in one or two lines on stderr (`error: ...`, then `hint: ...` saying what to check);
`--verbose` prints the traceback first. Exit codes: 0 success, 1 a failure at run time (the server, a file,
a prompt of the batch), 2 a usage error (argparse's convention), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import stat
import sys
import tempfile
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from haystack.core.errors import PipelineRuntimeError
from haystack.dataclasses import StreamingChunk
from haystack.utils import Secret

from ._auth import AMBIENT_TOKEN_VARS, Credentials, chosen_env_var, origin_of, source_of, withheld_variable
from ._config import HFGenerationAPIType, check_generation_kwargs, check_server_url, parse_grammar, server_base_url
from ._fleet import Fleet, FleetStatus
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
#: `--concurrency auto` with replicas (`--url`): how many prompts the batch keeps started at once. The generator's
#: admission decides how many of them are in flight on each replica; the others wait in the client. Memory is
#: bounded by this number, whatever the number of prompts.
_AUTO_STARTED = 1024
#: `--concurrency auto` without a URL (Inference Providers): nothing there says how much it takes, so few at once.
_SERVERLESS_CONCURRENCY = 8
#: How often the progress bar shows the replicas' figures (a snapshot of the fleet takes its lock).
_FLEET_REFRESH = 0.25


class CLIError(Exception):
    """A failure the user can act on: `message` says what went wrong, `hint` what to check."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# --- flags ----------------------------------------------------------------------------------------


def _json_object(text: str) -> dict[str, Any]:
    """argparse type of `--generation-kwargs`: a JSON object of generation parameters the generator accepts."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"top_k\": 10}}', got {text!r}")
    try:
        check_generation_kwargs(value, "")
    except ValueError as error:  # "['top_k'] must be ...": the key, without a dict name before it
        raise argparse.ArgumentTypeError(re.sub(r"^\[('[^']*')\]", r"\1", str(error))) from None
    return value


def _generation_value(key: str, kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type of `--max-new-tokens` and its kind: the generator's own rule, reported for the flag."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = text  # not a number: the check below fails and states the rule
        try:
            check_generation_kwargs({key: value}, "")
        except ValueError as error:
            rule = str(error).partition(" must be ")[2].rpartition(", got ")[0]
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        return value

    return parse


def _json_schema_file(text: str) -> dict[str, Any]:
    """argparse type of `--json-schema`: a file holding a JSON schema, as `grammar` takes it."""
    try:
        schema = json.loads(Path(text).read_text(encoding="utf-8"))
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {_reason(error)}") from None
    except ValueError as error:  # UnicodeDecodeError included
        raise argparse.ArgumentTypeError(f"{text} is not JSON ({error})") from None
    try:
        parse_grammar({"type": "json", "value": schema}, text)
    except ValueError as error:  # "FILE['value'] is not a valid JSON schema: ..."
        raise argparse.ArgumentTypeError(str(error).replace(f"{text}['value']", text, 1)) from None
    return {"type": "json", "value": schema}


def _regex(text: str) -> dict[str, Any]:
    """argparse type of `--regex`: a regular expression, as `grammar` takes it."""
    try:
        parse_grammar({"type": "regex", "value": text}, "")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).partition(" is ")[2] or str(error)) from None
    return {"type": "regex", "value": text}


def _seconds(text: str) -> float:
    """argparse type of `--timeout`."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _concurrency(text: str) -> int | str:
    """argparse type of `--concurrency`: `auto`, or a number of prompts in flight."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be auto or an integer >= 1, got {text!r}")
    return value


class _AppendURL(argparse.Action):
    """`--url`, repeatable: one gives a string (`api_params["url"]` as before), several a list of replicas."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        given = getattr(namespace, self.dest, None)
        if given is None:
            setattr(namespace, self.dest, values)
        elif isinstance(given, list):
            setattr(namespace, self.dest, [*given, values])
        else:
            setattr(namespace, self.dest, [given, values])


def _url_list(url: str | list[str] | None) -> list[str]:
    """`args.url` as a list: [] without `--url`, one URL per `--url` given."""
    if url is None:
        return []
    return [url] if isinstance(url, str) else list(url)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-api-generate",
        description="Generate text with HuggingFaceAPIGenerator (TGI, OpenAI-compatible servers, Inference "
        "Endpoints and Inference Providers).",
        epilog="Exit codes: 0 success, 1 failure at run time (server, file, failed prompts), 2 usage error, "
        "130 interrupted.",
    )
    parser.add_argument("prompt", nargs="?", help="the prompt, or - to read it from stdin (omit with --batch)")
    target = parser.add_argument_group("target")
    target.add_argument(
        "--api-type",
        default=None,
        choices=[t.value for t in HFGenerationAPIType],
        help="default: text_generation_inference with --url, serverless_inference_api with --model alone",
    )
    target.add_argument(
        "--url",
        action=_AppendURL,
        help="server URL (TGI, vLLM, an Inference Endpoint ...); repeat it for replicas of one server: each request "
        "goes to one of them, chosen by load",
    )
    target.add_argument("--model", help="Hub model id (serverless), or the model name to request from --url")
    target.add_argument("--provider", help="Inference Provider for serverless (default: auto)")
    target.add_argument(
        "--protocol", choices=["auto", "tgi", "completions", "chat"], help="wire protocol (default: auto)"
    )
    target.add_argument("--timeout", type=_seconds, help="connect and read timeout in seconds")
    target.add_argument(
        "--token-env",
        metavar="VAR",
        help="send the token held by this environment variable to --url (e.g. TGI's --api-key; HF_TOKEN too, "
        "when you name it); by default HF_TOKEN / HF_API_TOKEN, sent to Hugging Face hosts only",
    )
    target.add_argument("--pipeline", type=Path, help="run this saved pipeline (YAML) instead of a single generator")
    target.add_argument("--component", help="with --pipeline: the generator's name (default: the only one)")
    target.add_argument(
        "--prompt-input",
        metavar="COMPONENT.INPUT",
        help="with --pipeline: the input that receives the prompt (default: the component input named 'prompt')",
    )
    generation = parser.add_argument_group("generation")
    generation.add_argument(
        "--max-new-tokens", type=_generation_value("max_new_tokens", int), help="maximum tokens to generate"
    )
    generation.add_argument("--temperature", type=_generation_value("temperature", float))
    generation.add_argument("--seed", type=_generation_value("seed", int))
    generation.add_argument(
        "-n",
        type=_generation_value("n", int),
        metavar="K",
        help="K replies (needs sampling: --temperature or do_sample); engines without n get K requests",
    )
    structured = generation.add_mutually_exclusive_group()
    structured.add_argument(
        "--json-schema",
        type=_json_schema_file,
        metavar="FILE",
        help="constrain the reply to JSON that follows this schema",
    )
    structured.add_argument(
        "--regex", type=_regex, metavar="PATTERN", help="constrain the reply to match this regular expression whole"
    )
    generation.add_argument(
        "--details", action="store_true", help="ask for token details; print each token's log-probability"
    )
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
    batch.add_argument(
        "--output",
        metavar="OUT.jsonl",
        help="replies, one per line, resumable; - for stdout (not resumable)",
    )
    batch.add_argument(
        "--overwrite", action="store_true", help="replace an --output that is not this batch's replies file"
    )
    batch.add_argument(
        "--concurrency",
        type=_concurrency,
        metavar="auto|N",
        help=f"prompts in flight: auto (default) keeps up to {_AUTO_STARTED} started and lets each replica's adaptive "
        f"limit decide how many it is sent ({_SERVERLESS_CONCURRENCY} at once with --model alone); N: at most N",
    )
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


# Flags that belong to one mode only, and how each mode explains that it has no use for them.
_TARGET_FLAGS = ("url", "model", "provider", "protocol", "timeout", "api_type", "token_env", "stop")
_PIPELINE_FLAGS = ("component", "prompt_input")
_BATCH_FLAGS = ("output", "overwrite", "concurrency", "no_progress")
_SINGLE_FLAGS = ("json", "no_stream")
#: Flags that set a generation parameter, and its key in `--generation-kwargs`.
_GENERATION_FLAGS = (
    ("max_new_tokens", "max_new_tokens"),
    ("temperature", "temperature"),
    ("seed", "seed"),
    ("n", "n"),
    ("json_schema", "grammar"),
    ("regex", "grammar"),
    ("details", "details"),
)


def _flag(dest: str) -> str:
    return ("-" if len(dest) == 1 else "--") + dest.replace("_", "-")


def _given(args: argparse.Namespace, dest: str) -> bool:
    value = getattr(args, dest)
    return value is not None and value is not False  # not `in (None, False)`: `--seed 0` is given


def _refuse_flags_that_do_not_apply(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A flag that would be ignored is a usage error: the user meant something by it."""
    if args.batch:
        if args.prompt is not None:
            parser.error("give a prompt or --batch, not both")
        if args.pipeline:
            parser.error("--batch runs one generator; give --url or --model rather than --pipeline")
        for dest in _SINGLE_FLAGS:
            if _given(args, dest):
                parser.error(f"{_flag(dest)} does not apply to --batch: replies go to --output as JSON lines")
    else:
        for dest in _BATCH_FLAGS:
            if _given(args, dest):
                parser.error(f"{_flag(dest)} applies to --batch only")
    if args.pipeline:
        for dest in _TARGET_FLAGS:
            if _given(args, dest):
                what = "its 'token'" if dest == "token_env" else "its own settings"
                parser.error(f"{_flag(dest)} does not apply to --pipeline: the saved component has {what}")
    else:
        for dest in _PIPELINE_FLAGS:
            if _given(args, dest):
                parser.error(f"{_flag(dest)} applies to --pipeline only")
    for dest, key in _GENERATION_FLAGS:
        if _given(args, dest) and key in args.generation_kwargs:
            parser.error(f"{_flag(dest)} and {key!r} in --generation-kwargs say the same thing: give it once")
    if not args.pipeline and not args.url and not args.model:
        parser.error("give --url (a server) or --model (Inference Providers), or --pipeline")
    if args.provider and (args.url or (args.api_type or "serverless_inference_api") != "serverless_inference_api"):
        parser.error("--provider applies to Inference Providers only (--model without --url)")


def _generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`--generation-kwargs` and the generation flags (never both for one key: see `_GENERATION_FLAGS`)."""
    kwargs = dict(args.generation_kwargs)
    for dest, key in _GENERATION_FLAGS:
        if _given(args, dest):
            kwargs[key] = getattr(args, dest)  # --json-schema and --regex hold the grammar, --details True
    return kwargs


#: The generator's own default: HF_TOKEN / HF_API_TOKEN, for Hugging Face hosts only.
_DEFAULT_TOKEN = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False)

# The generator names its parameters; the command line user knows the flags that set them.
_FLAG_OF_PARAMETER = {
    "api_params['url']": "--url",
    "api_params['model']": "--model",
    "api_params['provider']": "--provider",
    "api_params['protocol']": "--protocol",
    "api_params['timeout']": "--timeout",
    "api_type": "--api-type",
}


@dataclass
class _Context:
    """What reporting a failure needs to know about this run: the tokens to keep out of every line, the 401 hint."""

    token_vars: set[str] = field(default_factory=lambda: set(AMBIENT_TOKEN_VARS))
    auth_hint: str | None = None

    def redact(self, text: str) -> str:
        """`text` without the value, or any piece of the value, of a token variable in play."""
        for name in sorted(self.token_vars):
            value = os.environ.get(name)
            if value and value.strip():
                text = Credentials(Secret.from_token(value)).redact(text)
        return text


def _token_hint(token: Secret | None, url: str | None, *, pipeline: bool) -> str:
    """What a 401 means here: which token went (or did not go) to the server, and how to send the right one."""
    withheld = withheld_variable(token, url) if url else None
    if withheld is not None and pipeline:
        return (
            f"the pipeline's token names {withheld}, which is sent to Hugging Face hosts only, never to a server a "
            f"pipeline file names (such a file may come from anyone); to send a token to {origin_of(url or '')} "
            "deliberately, export it under another name and set the component's token to "
            "{type: env_var, env_vars: [THAT_NAME]}"
        )
    if withheld is not None:
        return (
            f"{withheld} is set but was not sent: the default token goes to Hugging Face hosts over https only; "
            f"to send it to --url deliberately, pass --token-env {withheld}"
        )
    try:
        value = token.resolve_value() if token is not None else None
    except ValueError:  # a strict variable that is not set
        value = None
    if token is None or not value:
        where = "the component's 'token'" if pipeline else "--token-env VAR"
        return f"no token was sent: set HF_TOKEN for Hugging Face hosts, or give {where} for another server"
    return f"check {source_of(token)} and its permissions for this server"


def _generator(args: argparse.Namespace, parser: argparse.ArgumentParser, context: _Context) -> HuggingFaceAPIGenerator:
    if not args.url and not args.model:
        parser.error("give --url (a server) or --model (Inference Providers), or --pipeline")
    urls = _url_list(args.url)
    for url in urls:
        advice = "export it as MY_TOKEN and pass --token-env MY_TOKEN (a 'Basic <base64>' value is sent as it is)"
        check_server_url(url, "--url", advice)
    api_type = args.api_type or ("text_generation_inference" if args.url else "serverless_inference_api")
    # A variable named on the command line is the user's choice for this URL: sent, whatever its name.
    token = chosen_env_var(args.token_env) if args.token_env else _DEFAULT_TOKEN
    if args.token_env:
        context.token_vars.add(args.token_env)
        if not (os.environ.get(args.token_env) or "").strip():
            state = "is not set" if os.environ.get(args.token_env) is None else "is empty"
            raise CLIError(f"--token-env {args.token_env}: the environment variable {args.token_env} {state}")
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
    try:
        generator = HuggingFaceAPIGenerator(api_type=api_type, api_params=api_params, token=token, stop_words=args.stop)
    except (ValueError, TypeError) as error:
        raise CLIError(_flag_message(str(error))) from error
    # Replicas of one server share its token policy; a 401 is explained for the first URL the policy withholds from.
    shown = next((url for url in urls if withheld_variable(token, url)), urls[0] if urls else None)
    context.auth_hint = _token_hint(token, shown, pipeline=False)
    return generator


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _flag_message(message: str) -> str:
    """A message of the generator, with the flags that set its parameters instead of their names."""
    # One of several URLs: "api_params['url'][1] repeats ..." is the 2nd --url.
    message = re.sub(
        r"api_params\['url'\]\[(\d+)\]", lambda match: f"the {_ordinal(int(match.group(1)) + 1)} --url", message
    )
    for name, flag in _FLAG_OF_PARAMETER.items():
        message = message.replace(name, flag)
    return message


# --- one prompt -----------------------------------------------------------------------------------


class _Printer:
    """
    The streaming callback of a single prompt: prints each chunk of the first reply (the others are printed at
    the end, see `_print_result`), and remembers whether a line is open.
    """

    def __init__(self) -> None:
        self.printed = False

    def __call__(self, chunk: StreamingChunk) -> None:
        if chunk.index:
            return
        if chunk.content:
            self.printed = True
        print(chunk.content, end="", flush=True)


def _print_result(result: dict[str, Any], *, streamed: bool, details: bool) -> None:
    """The replies on stdout, each after a `--- reply i ---` line when there are several; token details after each."""
    replies, metas = result["replies"], result["meta"]
    for index, (reply, meta) in enumerate(zip(replies, metas, strict=True)):
        if index == 0 and streamed:
            print()  # the streamed reply's line ends
        else:
            if len(replies) > 1:
                print(f"--- reply {index} ---")
            print(reply)
        if details:
            _print_tokens(meta)


def _print_tokens(meta: dict[str, Any]) -> None:
    """`meta["tokens"]`, a line each: log-probability, the token's text, then its most likely alternatives."""
    tokens = meta.get("tokens")
    if tokens is None:
        return
    print(f"--- tokens: {len(tokens)}, each with its log-probability and the most likely tokens at its place ---")
    for token in tokens:
        logprob = token["logprob"]
        shown = "      n/a" if logprob is None else f"{logprob:9.4f}"
        alternatives = ", ".join(f"{alt['text']!r} {alt['logprob']:.4f}" for alt in token["top"])
        print(f"{shown}  {token['text']!r}" + (f"  ({alternatives})" if alternatives else ""))


def _prompt(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The prompt argument; `-` reads stdin, without the one line ending `echo` adds."""
    if args.prompt != "-":
        return str(args.prompt)
    text = sys.stdin.read()
    text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    if not text.strip():
        parser.error("the prompt read from stdin (-) is empty")
    return text


def _run_one(args: argparse.Namespace, parser: argparse.ArgumentParser, context: _Context) -> int:
    kwargs = _generation_kwargs(args)
    # Several replies are printed one after the other at the end, not interleaved as they stream.
    printer = None if args.no_stream or args.json or (kwargs.get("n") or 1) > 1 else _Printer()
    prompt = _prompt(args, parser)
    try:
        if args.pipeline:
            result = _run_pipeline(args, parser, prompt, kwargs, printer, context)
        else:
            with _generator(args, parser, context) as generator:
                result = generator.run(prompt, streaming_callback=printer, generation_kwargs=kwargs or None)
    except BaseException:
        if printer is not None and printer.printed:
            print(flush=True)  # end the partial reply's line before the error is reported
        raise
    if args.json:
        print(json.dumps(result, ensure_ascii=False, default=str))
    else:
        _print_result(result, streamed=printer is not None, details=args.details)
    return EXIT_OK


# --- a saved pipeline -----------------------------------------------------------------------------


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


def _prompt_input(
    args: argparse.Namespace, parser: argparse.ArgumentParser, open_inputs: dict[str, dict[str, Any]]
) -> tuple[str, str]:
    """
    Where the prompt goes: `--prompt-input COMPONENT.INPUT`, else the one component whose unconnected inputs
    include `prompt` (a generator fed by a PromptBuilder has its prompt connected: the builder is fed instead).
    """
    listed = ", ".join(f"{c}.{i}" for c, inputs in open_inputs.items() for i in inputs) or "none"
    if args.prompt_input:
        component, _, name = args.prompt_input.partition(".")
        if name not in open_inputs.get(component, {}):
            parser.error(f"--prompt-input {args.prompt_input} is not an unconnected input of --pipeline ({listed})")
        return component, name
    takers = [component for component, inputs in open_inputs.items() if "prompt" in inputs]
    if len(takers) == 1:
        return takers[0], "prompt"
    mandatory = [f"{c}.{i}" for c, inputs in open_inputs.items() for i, spec in inputs.items() if spec["is_mandatory"]]
    if not takers:
        example = mandatory[0] if mandatory else "COMPONENT.INPUT"
        parser.error(
            f"no component of --pipeline takes an unconnected input 'prompt' (its mandatory inputs: "
            f"{', '.join(mandatory) or 'none'}); say where the prompt goes with --prompt-input {example}"
        )
    parser.error(
        f"components {', '.join(takers)} of --pipeline all take 'prompt'; choose one with --prompt-input "
        f"{takers[0]}.prompt"
    )


def _run_pipeline(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    prompt: str,
    kwargs: dict[str, Any],
    callback: Callable[[StreamingChunk], None] | None,
    context: _Context,
) -> dict[str, Any]:
    pipeline = _load_pipeline(args.pipeline)
    names = [name for name, data in pipeline.to_dict()["components"].items() if data["type"] == _NAME]
    if args.component is not None and args.component not in names:
        parser.error(f"--component {args.component} is not a HuggingFaceAPIGenerator of --pipeline ({names})")
    name = args.component or (names[0] if len(names) == 1 else None)
    if name is None:
        parser.error(f"--pipeline has {len(names)} HuggingFaceAPIGenerator components {names}; choose with --component")
    generator: HuggingFaceAPIGenerator = pipeline.get_component(name)
    if generator.token is not None and generator.token.type.value == "env_var":
        context.token_vars.update(generator.token.to_dict()["env_vars"])
    context.auth_hint = _token_hint(generator.token, generator.api_params.get("url"), pipeline=True)

    open_inputs: dict[str, dict[str, Any]] = pipeline.inputs()
    component, input_name = _prompt_input(args, parser, open_inputs)
    data: dict[str, dict[str, Any]] = {component: {input_name: prompt}}
    for key, value in (("generation_kwargs", kwargs), ("streaming_callback", callback)):
        if value and key in open_inputs.get(name, {}):
            data.setdefault(name, {})[key] = value
        elif value and key == "generation_kwargs":
            raise CLIError(f"the generation flags cannot reach {name}: its generation_kwargs input is connected")
    unfed = [
        f"{c}.{i}"
        for c, inputs in open_inputs.items()
        for i, spec in inputs.items()
        if spec["is_mandatory"] and i not in data.get(c, {})
    ]
    if unfed:
        raise CLIError(
            f"--pipeline {args.pipeline} needs {', '.join(unfed)}, which the command line does not give (it gives "
            f"the prompt, to {component}.{input_name})",
            "choose where the prompt goes with --prompt-input COMPONENT.INPUT, or give the other inputs defaults "
            "in the pipeline",
        )
    result = pipeline.run(data, include_outputs_from={name})
    if name not in result:
        raise CLIError(f"--pipeline {args.pipeline} finished without running {name}")
    output: dict[str, Any] = result[name]
    return output


# --- batch: the files -----------------------------------------------------------------------------
#
# The output is a log of records, one JSON object a line, appended (one write and a flush each) as prompts are
# answered: a kill tears at most the last line, which the next run cuts off. Each record carries a fingerprint of
# what decided its reply (prompt, generation parameters, server, model, protocol, stop words); a later run reuses
# a reply only for the same id with the same fingerprint. Among replicas (`--url` repeated), the server in the
# fingerprint is the replica that answered: a reply is reused as long as its replica is still given, whichever
# others are added or left out (the same fingerprint as a run with that one `--url`). At the end of a resumed
# pass, the log is compacted (temp file + rename): the latest record per id, in the order they were written.

# Every record starts so (the id first): this tells a torn record of ours from a file that is not ours.
_RECORD_START = b'{"id": '


def _key_hash(key: str) -> int:
    """A 64-bit digest of an id: what the resume index keeps instead of the id itself."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One prompt of a batch. `key` is the id as text, to match output records; `id` is kept as given."""

    key: str
    id: Any
    prompt: str
    generation_kwargs: dict[str, Any] | None
    #: One per server (`--url`), in the order given: a reply from any of them is this prompt's reply.
    fingerprints: tuple[str, ...]
    line: int

    @property
    def fingerprint(self) -> str:
        """The fingerprint with the first server: a record's until a replica answers it."""
        return self.fingerprints[0]


class _Settings:
    """What, besides the prompt, decides a reply: the target, the generation flags and the stop words."""

    def __init__(self, args: argparse.Namespace, base_kwargs: dict[str, Any]) -> None:
        self.base_kwargs = base_kwargs
        api_type = args.api_type or ("text_generation_inference" if args.url else "serverless_inference_api")
        urls: list[str | None] = [*_url_list(args.url)] or [None]
        rest = [args.model, args.provider, args.protocol or "auto", args.stop or []]
        # The fingerprint hashes json.dumps([target, kwargs, prompt]); each server's target is hashed once here,
        # each prompt's part once per prompt, whatever the number of replicas.
        self._starts = []
        for url in urls:
            target = json.dumps([api_type, url, *rest], ensure_ascii=False)
            start = "[" + json.dumps(target, ensure_ascii=False) + ", "
            self._starts.append(hashlib.blake2b(start.encode("utf-8", "surrogatepass"), digest_size=16))
        #: meta["replica"] (the base URL that answered) -> its place among the URLs.
        self._replica_index = {server_base_url(url.strip()): i for i, url in reversed(list(enumerate(urls))) if url}

    def fingerprints(self, prompt: str, kwargs: dict[str, Any] | None) -> tuple[str, ...]:
        """The fingerprint of a prompt with each server (one without `--url`, or with one)."""
        # As the generator sees them: the line's kwargs over the flags' ones, None meaning "the server's default".
        merged = {key: value for key, value in {**self.base_kwargs, **(kwargs or {})}.items() if value is not None}
        end = json.dumps(merged, sort_keys=True, ensure_ascii=False, default=str)
        end += ", " + json.dumps(prompt, ensure_ascii=False) + "]"
        data = end.encode("utf-8", "surrogatepass")
        digests = []
        for start in self._starts:
            digest = start.copy()
            digest.update(data)
            digests.append(digest.hexdigest())
        return tuple(digests)

    def fingerprint(self, prompt: str, kwargs: dict[str, Any] | None) -> str:
        """The fingerprint of a prompt with the first (or only) server."""
        return self.fingerprints(prompt, kwargs)[0]

    def answered(self, item: BatchItem, result: dict[str, Any]) -> str:
        """The fingerprint of a reply: with the replica that answered it (meta["replica"]; the first if unnamed)."""
        metas = result.get("meta") or [{}]
        return item.fingerprints[self._replica_index.get(metas[0].get("replica"), 0)]


def _parse_prompt_line(path: Path, number: int, line: str, settings: _Settings) -> BatchItem | None:
    """One line of `--batch`: an item, None for a blank line, or a CLIError naming the file and line."""
    if not line.strip():
        return None
    try:
        item = json.loads(line)
    except ValueError as error:
        raise CLIError(f"{path}:{number}: not JSON ({error})", "each line is one JSON object or string") from None
    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        raise CLIError(f'{path}:{number}: expected {{"prompt": "..."}} or a JSON string')
    if not item["prompt"].strip():
        raise CLIError(f"{path}:{number}: the prompt is empty")
    kwargs = item.get("generation_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise CLIError(f"{path}:{number}: generation_kwargs must be a JSON object, got {json.dumps(kwargs)}")
    try:
        check_generation_kwargs(kwargs, "generation_kwargs")
    except ValueError as error:
        raise CLIError(f"{path}:{number}: {error}") from None
    given_id, prompt = item.get("id", number), item["prompt"]
    return BatchItem(str(given_id), given_id, prompt, kwargs, settings.fingerprints(prompt, kwargs), number)


def _prompt_items(path: Path, settings: _Settings) -> Iterator[BatchItem]:
    """The prompts of `--batch`, read one line at a time."""
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                item = _parse_prompt_line(path, number, line, settings)
                if item is not None:
                    yield item
    except (OSError, UnicodeDecodeError) as error:
        raise CLIError(f"cannot read --batch {path}: {_reason(error)}") from error


class _IdFilter:
    """
    Finds repeated ids in a fixed amount of memory: a Bloom filter flags each id it may have seen before, and
    only those few are kept, for a second reading that tells a true repeat from a false alarm.
    """

    _BITS = 1 << 24  # 2 MiB: about 0.2 % false alarms at a million ids

    def __init__(self) -> None:
        self._bits = bytearray(self._BITS // 8)
        self.suspects: set[str] = set()

    def add(self, key: str) -> None:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        known = True
        for i in range(0, 16, 4):
            bit = int.from_bytes(digest[i : i + 4], "little") & (self._BITS - 1)
            byte, mask = bit >> 3, 1 << (bit & 7)
            if not self._bits[byte] & mask:
                known = False
                self._bits[byte] |= mask
        if known:
            self.suspects.add(key)


class _Index:
    """
    What an existing output holds, per id: whether its latest record is a reply, and that record's fingerprint.

    Kept as two 64-bit numbers per record, about 125 bytes: resuming holds one entry per record of `--output`
    (a fresh run, none).
    """

    _REPLY, _SEEN = 1, 2

    def __init__(self) -> None:
        self._entries: dict[int, int] = {}
        self.records = 0
        self.repeated = False  # some id has several records (a killed resume): the log needs compacting

    @staticmethod
    def _fingerprint_bits(fingerprint: Any) -> int:
        try:
            return int(str(fingerprint)[:16], 16) << 2
        except ValueError:
            return 0  # no fingerprint (an older hf-api-generate): never matches

    def add(self, record: dict[str, Any]) -> None:
        key = _key_hash(str(record["id"]))
        self.repeated = self.repeated or key in self._entries
        answered = "reply" in record or "replies" in record
        self._entries[key] = self._fingerprint_bits(record.get("fingerprint")) | (answered and self._REPLY)
        self.records += 1

    def look_up(self, item: BatchItem) -> tuple[bool, bool, bool]:
        """
        (recorded, a reply, with one of its fingerprints: from one of the servers given) for the id of `item`;
        marks the id as part of this batch.
        """
        key = _key_hash(item.key)
        entry = self._entries.get(key)
        if entry is None:
            return False, False, False
        self._entries[key] = entry | self._SEEN
        same = any(entry >> 2 == self._fingerprint_bits(fingerprint) >> 2 for fingerprint in item.fingerprints)
        return True, bool(entry & self._REPLY), same

    def reusable(self, item: BatchItem) -> bool:
        """Whether the latest record of this id is a reply to the same prompt with the same settings."""
        _, reply, same = self.look_up(item)
        return reply and same

    def replies(self) -> int:
        return sum(1 for entry in self._entries.values() if entry & self._REPLY)

    def unseen(self) -> int:
        """Ids recorded in the output that this batch does not have."""
        return sum(1 for entry in self._entries.values() if not entry & self._SEEN)


@dataclass
class _Output:
    """Where records go. `real` is the file written (symlinks followed), None for a stream such as stdout."""

    shown: str
    real: Path | None
    stream: TextIO | None = None
    torn_at: int | None = None  # where a torn last record starts, cut off before appending
    needs_newline: bool = False  # the last record is whole but its newline was not written


class _NotReplies(Exception):
    """The output file holds something other than records of hf-api-generate."""


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return os.path.samestat(a, b)


def _output_target(args: argparse.Namespace) -> _Output:
    """Resolves `--output`: stdout and other non-files are streams, written and never read back."""
    shown = str(args.output)
    if shown == "-":
        return _Output(shown, None, sys.stdout)
    path = Path(args.output)
    try:
        status = path.stat()  # follows symlinks
    except FileNotFoundError:
        return _Output(shown, Path(os.path.realpath(path)))
    except OSError as error:
        raise CLIError(f"cannot write --output {shown}: {_reason(error)}") from error
    if stat.S_ISDIR(status.st_mode):
        raise CLIError(f"--output {shown} is a directory", "give a file name, such as replies.jsonl")
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if _same_file(status, os.fstat(sys.stdout.fileno())):
            return _Output(shown, None, sys.stdout)  # /dev/stdout: this process's own stdout, even a file
    with contextlib.suppress(OSError):
        if _same_file(status, args.batch.stat()):
            raise CLIError(
                f"--output {shown} is the --batch file: the replies would replace the prompts",
                "choose another --output",
            )
    if not stat.S_ISREG(status.st_mode):
        return _Output(shown, None)  # a FIFO, a terminal, /dev/null: opened for writing only
    return _Output(shown, Path(os.path.realpath(path)))


def _scan_output(output: _Output, index: _Index) -> None:
    """
    Reads the records of an existing output into `index`.

    :raises _NotReplies: When a line is not a record of ours (a torn last record is one of ours).
    """
    assert output.real is not None
    with output.real.open("rb") as file:
        if not _RECORD_START.startswith(file.read(len(_RECORD_START))):  # a quick no for a file of another kind
            raise _NotReplies("it does not start with a record")
        file.seek(0)
        offset = 0
        for number, line in enumerate(file, start=1):
            whole = line.endswith(b"\n")
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and "id" in record and any(k in record for k in ("reply", "replies", "error")):
                index.add(record)
                output.needs_newline = not whole
            elif not whole and line.startswith(_RECORD_START):  # a record goes out in one write: its start is whole
                output.torn_at = offset  # killed while writing it
            else:
                raise _NotReplies(f"line {number} is not a record of hf-api-generate")
            offset += len(line)


@dataclass
class _Survey:
    """What the batch asks, checked before any request, and what an earlier run already did."""

    total: int = 0
    reused: int = 0
    failed_before: int = 0
    changed: int = 0
    changed_ids: list[str] = field(default_factory=list)


def _survey(path: Path, settings: _Settings, index: _Index | None) -> _Survey:
    """
    Reads `--batch` once: every line checked (so a bad line stops the command before any request), ids unique,
    and what `index` already holds for each.
    """
    survey = _Survey()
    ids = _IdFilter()
    for item in _prompt_items(path, settings):
        survey.total += 1
        ids.add(item.key)
        if index is None:
            continue
        recorded, reply, same = index.look_up(item)
        if reply and same:
            survey.reused += 1
        elif reply:
            survey.changed += 1
            if len(survey.changed_ids) < 5:
                survey.changed_ids.append(item.key)
        elif recorded:
            survey.failed_before += 1
    if ids.suspects:  # read again for those ids only: which ones really repeat
        first: dict[str, int] = {}
        for item in _prompt_items(path, settings):
            if item.key in ids.suspects:
                if item.key in first:
                    raise CLIError(f"{path}:{item.line}: duplicate id {item.key!r} (first on line {first[item.key]})")
                first[item.key] = item.line
    return survey


def _compact(output: _Output) -> None:
    """Rewrites the log with the latest record per id, in the order written: temp file + rename, mode kept."""
    assert output.real is not None
    real = output.real
    try:
        latest: dict[int, int] = {}
        with real.open("rb") as file:
            for number, line in enumerate(file):
                latest[_key_hash(str(json.loads(line)["id"]))] = number
        mode = stat.S_IMODE(real.stat().st_mode)
        handle, temporary = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out, real.open("rb") as file:
                for number, line in enumerate(file):
                    if latest[_key_hash(str(json.loads(line)["id"]))] == number:
                        out.write(line)
            os.chmod(temporary, mode)
            os.replace(temporary, real)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as error:
        raise CLIError(f"cannot write --output {output.shown}: {_reason(error)}") from error


# --- batch: the run -------------------------------------------------------------------------------


class BarNotes:
    """
    The batch progress bar's postfix: an Inference Endpoint scaling up, and the replicas' figures. Each part is
    set on its own and the bar shows both, so that neither erases the other.
    """

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.scale_up = ""
        self.fleet = ""
        self._lock = threading.Lock()  # the scale-up part comes from log records, of any thread

    def set(self, *, scale_up: str | None = None, fleet: str | None = None) -> None:
        with self._lock:
            if scale_up is not None:
                self.scale_up = scale_up
            if fleet is not None:
                self.fleet = fleet
            text = " · ".join(part for part in (self.scale_up, self.fleet) if part)
            if text != (self.progress.postfix or ""):
                self.progress.set_postfix_str(text)


def fleet_figures(status: FleetStatus) -> str:
    """The replicas' figures for the progress bar: serving (not left out) / given, in flight, waiting, refused."""
    return (
        f"replicas {status.serving}/{status.replicas} · in flight {status.in_flight} · waiting {status.waiting} · "
        f"refused {status.refused}"
    )


async def _show_fleet(fleet: Fleet, notes: BarNotes, every: float = _FLEET_REFRESH) -> None:
    """Puts the fleet's figures on the progress bar every `every` seconds, until cancelled."""
    while True:
        notes.set(fleet=fleet_figures(fleet.snapshot()))
        await asyncio.sleep(every)


class ScaleUpProgress(logging.Handler):
    """
    Shows on the batch progress bar that an Inference Endpoint is scaling up.

    The package's logger emits WARNING records carrying `hf_scale_up` ("waiting", "ready" or "gave_up") and
    `hf_scale_up_seconds` (for "waiting": the longest it will wait). "waiting" sets the scale-up part of the
    bar's postfix, "ready" and "gave_up" clear it (the replicas' figures, see `BarNotes`, stay); other records
    are ignored.
    """

    def __init__(self, progress: Any, notes: BarNotes | None = None) -> None:
        super().__init__(level=logging.DEBUG)
        self.progress = progress
        self.notes = notes or BarNotes(progress)

    def emit(self, record: logging.LogRecord) -> None:
        state = getattr(record, "hf_scale_up", None)
        if state == "waiting":
            seconds = getattr(record, "hf_scale_up_seconds", None)
            text = "endpoint scaling up"
            if isinstance(seconds, int | float):
                text += f", waiting up to {seconds:.0f} s"
            self.notes.set(scale_up=text)
        elif state in {"ready", "gave_up"}:
            self.notes.set(scale_up="")


@contextlib.contextmanager
def scale_up_progress(progress: Any, notes: BarNotes | None = None) -> Iterator[ScaleUpProgress]:
    """Attaches a `ScaleUpProgress` to the package's logger for the duration of the block."""
    handler = ScaleUpProgress(progress, notes)
    logger = logging.getLogger(_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@dataclass(slots=True)
class _BatchOutcome:
    answered: int = 0
    failures: int = 0
    first_error: BaseException | None = None


#: Answers one item: the generator's result (`replies`, `meta`).
Ask = Callable[[BatchItem], Awaitable[dict[str, Any]]]


async def _run_batch_async(
    ask: Ask,
    items: Iterator[BatchItem],
    write: Callable[[dict[str, Any]], None],
    concurrency: int,
    progress: Any,
    redact: Callable[[str], str] = str,
    fingerprint: Callable[[BatchItem, dict[str, Any]], str] | None = None,
) -> _BatchOutcome:
    """
    Answers `items` with `concurrency` workers fed through a queue of as many slots, and passes each record to
    `write` as soon as it is known.

    Items are read from `items` only as workers free up: memory is bounded by the concurrency, whatever the
    number of prompts. (With replicas, how many of the started prompts are in flight on each is the generator's
    admission's to decide: the others wait in the client.) A failure of `write` (a full disk) stops the batch; a
    failure of `ask` becomes an error record, tried again by the next run. `fingerprint`: a reply's (by default,
    the item's).
    """
    outcome = _BatchOutcome()
    queue: asyncio.Queue[BatchItem | None] = asyncio.Queue(maxsize=concurrency)

    async def produce() -> None:
        for item in items:
            await queue.put(item)
        for _ in range(concurrency):
            await queue.put(None)  # one end mark per worker

    async def work() -> None:
        while (item := await queue.get()) is not None:
            record: dict[str, Any] = {"id": item.id, "fingerprint": item.fingerprint}
            try:
                result = await ask(item)
                if fingerprint is not None:
                    record["fingerprint"] = fingerprint(item, result)
                if len(result["replies"]) == 1:
                    record.update(reply=result["replies"][0], meta=result["meta"][0])
                else:  # `n`: all the replies, and a meta for each, as the generator returns them
                    record.update(replies=result["replies"], meta=result["meta"])
                outcome.answered += 1
            except Exception as error:  # recorded, and tried again by the next run
                outcome.failures += 1
                outcome.first_error = outcome.first_error or error
                record["error"] = {"type": type(error).__name__, "message": redact(str(error))}
            write(record)
            progress.update(1)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(concurrency):
                group.create_task(work())
    except BaseExceptionGroup as failed:  # the first failure, as the caller would get it without a task group
        raise failed.exceptions[0] from None
    return outcome


class _RecordWriter:
    """Appends records, one whole line per write, flushed: an interruption tears at most the line being written."""

    def __init__(self, file: TextIO, shown: str) -> None:
        self._file = file
        self._shown = shown
        self.written = 0

    def __call__(self, record: dict[str, Any]) -> None:
        try:
            try:
                self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            except UnicodeEncodeError:  # raised before any byte is written: a lone surrogate, an ASCII stdout
                self._file.write(json.dumps(record, default=str) + "\n")
            self._file.flush()
        except OSError as error:
            raise CLIError(f"cannot write --output {self._shown}: {_reason(error)}") from error
        self.written += 1


def _open_for_records(output: _Output, overwrite: bool) -> TextIO:
    """The output, ready for appending: emptied with --overwrite, a torn last record cut off."""
    if output.stream is not None:
        return output.stream
    path = output.real or Path(output.shown)
    try:
        if output.real is not None and overwrite:
            file = path.open("w", encoding="utf-8", newline="\n")  # truncates the target in place: links stay
        else:
            if output.torn_at is not None:
                os.truncate(path, output.torn_at)
            file = path.open("a", encoding="utf-8", newline="\n")
            if output.needs_newline:
                file.write("\n")
    except OSError as error:
        raise CLIError(f"cannot write --output {output.shown}: {_reason(error)}") from error
    return file


def _resume_notes(output: _Output, batch: Path, survey: _Survey, index: _Index) -> list[str]:
    notes: list[str] = []
    if survey.reused:
        notes.append(f"{survey.reused} answered earlier with the same prompt and settings: skipped")
    if survey.failed_before:
        notes.append(f"{survey.failed_before} that failed earlier: asked again")
    if survey.changed:
        ids = ", ".join(repr(key) for key in survey.changed_ids) + (", ..." if survey.changed > 5 else "")
        notes.append(
            f"{survey.changed} answered earlier with another prompt or other settings: asked again, their old "
            f"replies replaced (ids {ids})"
        )
    if unseen := index.unseen():
        notes.append(f"{unseen} records of ids that {batch} does not have: kept")
    return [f"resuming {output.shown}: {note}" for note in notes]


def _run_batch(args: argparse.Namespace, parser: argparse.ArgumentParser, context: _Context) -> int:
    if args.output is None:
        parser.error("--batch needs --output (a file, or - for stdout)")
    generator = _generator(args, parser, context)  # usage errors come before any file is touched
    fleet = generator._current().core.fleet  # the replicas of --url; None for Inference Providers
    if isinstance(args.concurrency, int):
        concurrency = args.concurrency
    else:  # auto: many started, the replicas' admission decides how many are in flight
        concurrency = _AUTO_STARTED if fleet is not None else _SERVERLESS_CONCURRENCY
    base_kwargs = _generation_kwargs(args)
    settings = _Settings(args, base_kwargs)

    try:
        batch_status = args.batch.stat()
    except OSError as error:
        raise CLIError(f"cannot read --batch {args.batch}: {_reason(error)}") from error
    if not stat.S_ISREG(batch_status.st_mode):
        raise CLIError(f"--batch {args.batch} must be a regular file: it is read twice, checked first, then sent")
    output = _output_target(args)
    if args.overwrite and output.real is None:
        parser.error(f"--overwrite does not apply to --output {output.shown}: nothing is read back or replaced")

    index = _Index()
    if output.real is not None and output.real.exists() and not args.overwrite:
        try:
            _scan_output(output, index)
        except _NotReplies as reason:
            raise CLIError(
                f"--output {output.shown} exists and is not a replies file of hf-api-generate ({reason}): "
                "refusing to replace it",
                "choose another --output, or pass --overwrite to replace it",
            ) from None
        except OSError as error:
            raise CLIError(f"cannot read --output {output.shown}: {_reason(error)}") from error
    survey = _survey(args.batch, settings, index if index.records else None)
    if index.records and not survey.reused and (replies := index.replies()):
        raise CLIError(
            f"--output {output.shown} holds {replies} replies, none of them to these prompts with these settings "
            "(same id, prompt and generation flags): it looks like the output of another batch",
            "choose another --output, or pass --overwrite to replace it (its replies are then lost)",
        )
    for note in _resume_notes(output, args.batch, survey, index):
        print(note, file=sys.stderr)

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    out = _open_for_records(output, args.overwrite)
    write = _RecordWriter(out, output.shown)

    async def answer(item: BatchItem) -> dict[str, Any]:
        kwargs = {**base_kwargs, **(item.generation_kwargs or {})}
        return await generator.run_async(item.prompt, generation_kwargs=kwargs)

    async def run() -> _BatchOutcome:
        try:
            if survey.total > survey.reused:
                await generator.warm_up_async()  # a wrong --url or token fails once, not once per prompt
            todo = (item for item in _prompt_items(args.batch, settings) if not index.reusable(item))
            shown = None
            if fleet is not None and not args.no_progress:
                shown = asyncio.create_task(_show_fleet(fleet, scale_up.notes))
            try:
                return await _run_batch_async(
                    answer, todo, write, concurrency, progress, context.redact, settings.answered
                )
            finally:
                if shown is not None:
                    shown.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await shown
                    scale_up.notes.set(fleet=fleet_figures(fleet.snapshot()))  # type: ignore[union-attr]
        finally:
            await generator.aclose()

    with (
        out if out is not output.stream else contextlib.nullcontext(),
        tqdm(total=survey.total, initial=survey.reused, disable=args.no_progress, unit="prompt") as progress,
        # Log lines (a warning, say) are printed above the bar instead of through it.
        logging_redirect_tqdm() if not args.no_progress else contextlib.nullcontext(),
        scale_up_progress(progress) as scale_up,
    ):
        outcome = asyncio.run(run())
    if output.real is not None and (index.repeated or (index.records and write.written)):
        _compact(output)
    answered = survey.reused + outcome.answered
    summary = f"{answered}/{survey.total} answered, {outcome.failures} failed"
    if outcome.first_error is None:
        print(summary, file=sys.stderr)
        return EXIT_OK
    where = f"{output.shown} has each error" if output.real is not None else "each error is in its record"
    again = "rerun the command to retry them; " if output.real is not None else ""
    print(f"{summary} ({again}{where})", file=sys.stderr)
    _report(outcome.first_error, verbose=args.verbose, context=context, prefix="first error: ")
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


def _hint(error: BaseException, context: _Context) -> str | None:
    """What to check for a failure on the wire."""
    if isinstance(error, APITimeoutError):
        return "the server took longer than the timeout: check its load, or raise --timeout"
    if isinstance(error, APIConnectionError):
        return "check that the server is running and reachable at --url (or the pipeline's url)"
    if isinstance(error, AuthenticationError):
        return context.auth_hint or (
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


def _describe(error: BaseException, context: _Context) -> tuple[str, str | None]:
    """(message, hint) for a failure. Only our own messages are printed: they never contain a token."""
    if isinstance(error, CLIError):
        return error.message, error.hint
    # A pipeline wraps its component's exception (haystack's PipelineRuntimeError): report the component's.
    if isinstance(error, PipelineRuntimeError) and error.__cause__ is not None:
        return _describe(error.__cause__, context)
    if isinstance(error, HuggingFaceAPIError):
        return str(error), _hint(error, context)
    if isinstance(error, ValueError | TypeError):  # bad parameters, named by the generator's message
        return str(error), None
    if isinstance(error, OSError):
        return f"{error.filename + ': ' if error.filename else ''}{_reason(error)}", None
    return f"unexpected {type(error).__name__}", "rerun with --verbose for the traceback"


def _report(error: BaseException, *, verbose: bool, context: _Context, prefix: str = "error: ") -> None:
    # Every line goes through the token filter: a message from a library may quote a header it refused.
    if verbose:
        print(context.redact("".join(traceback.format_exception(error))), end="", file=sys.stderr)
    message, hint = _describe(error, context)
    print(f"{prefix}{_one_line(context.redact(message))}", file=sys.stderr)
    if hint:
        print(f"hint: {context.redact(hint)}", file=sys.stderr)


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
    _refuse_flags_that_do_not_apply(args, parser)
    with _package_logs(args.verbose, notes=not args.batch or args.no_progress):
        return _main(args, parser)


def _main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    context = _Context()
    try:
        if args.batch:
            return _run_batch(args, parser, context)
        if args.prompt is None:
            parser.error("give a prompt (- reads it from stdin), or --batch")
        return _run_one(args, parser, context)
    except KeyboardInterrupt:
        resume = " (rerun the same command to resume the batch)" if args.batch and args.output != "-" else ""
        print(f"interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        _report(error, verbose=args.verbose, context=context)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
