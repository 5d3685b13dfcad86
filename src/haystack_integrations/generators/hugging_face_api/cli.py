"""
Command line: `hf-api-generate`.

- `hf-api-generate "prompt" --url http://localhost:8080` streams one reply to the terminal;
- `hf-api-generate "prompt" --pipeline pipeline.yaml` runs a saved pipeline with query-time parameters;
- `hf-api-generate --batch prompts.jsonl --output replies.jsonl` answers many prompts concurrently and
  resumes after an interruption: what is answered is skipped, what failed is tried again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from haystack.dataclasses import StreamingChunk

from ._config import HFGenerationAPIType
from .generator import HuggingFaceAPIGenerator

_NAME = "haystack_integrations.generators.hugging_face_api.HuggingFaceAPIGenerator"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-api-generate",
        description="Generate text with HuggingFaceAPIGenerator (TGI, OpenAI-compatible servers, Inference "
        "Endpoints and Inference Providers).",
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
    target.add_argument("--pipeline", type=Path, help="run this saved pipeline (YAML) instead of a single generator")
    target.add_argument("--component", help="with --pipeline: the generator's name (default: the only one)")
    generation = parser.add_argument_group("generation")
    generation.add_argument("--max-new-tokens", type=int, help="maximum tokens to generate")
    generation.add_argument("--temperature", type=float)
    generation.add_argument("--seed", type=int)
    generation.add_argument(
        "--generation-kwargs", type=json.loads, default={}, metavar="JSON", help="e.g. '{\"top_k\": 10}'"
    )
    generation.add_argument("--stop", action="append", default=None, metavar="WORD", help="a stop word (repeatable)")
    generation.add_argument("--no-stream", action="store_true", help="print the reply at the end instead of streaming")
    generation.add_argument("--json", action="store_true", help="print the result (replies and meta) as JSON")
    batch = parser.add_argument_group("batch")
    batch.add_argument(
        "--batch", type=Path, metavar="IN.jsonl", help='prompts, one per line: {"id": ..., "prompt": ...}'
    )
    batch.add_argument("--output", type=Path, metavar="OUT.jsonl", help="replies, one per line (resumable)")
    batch.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    batch.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = dict(args.generation_kwargs)
    for key in ("max_new_tokens", "temperature", "seed"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return kwargs


def _generator(args: argparse.Namespace, parser: argparse.ArgumentParser) -> HuggingFaceAPIGenerator:
    if not args.url and not args.model:
        parser.error("give --url (a server) or --model (Inference Providers), or --pipeline")
    api_type = args.api_type or ("text_generation_inference" if args.url else "serverless_inference_api")
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
    return HuggingFaceAPIGenerator(api_type=api_type, api_params=api_params, stop_words=args.stop)


def _print_chunk(chunk: StreamingChunk) -> None:
    print(chunk.content, end="", flush=True)


def _run_one(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    callback = None if args.no_stream or args.json else _print_chunk
    kwargs = _generation_kwargs(args)
    if args.pipeline:
        result = _run_pipeline(args, parser, kwargs, callback)
    else:
        with _generator(args, parser) as generator:
            result = generator.run(args.prompt, streaming_callback=callback, generation_kwargs=kwargs or None)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, default=str))
    elif callback is None:
        print(result["replies"][0])
    else:
        print()
    return 0


def _run_pipeline(
    args: argparse.Namespace, parser: argparse.ArgumentParser, kwargs: dict[str, Any], callback: Any
) -> dict[str, Any]:
    from haystack import Pipeline

    pipeline = Pipeline.loads(args.pipeline.read_text())
    names = [name for name, data in pipeline.to_dict()["components"].items() if data["type"] == _NAME]
    name = args.component or (names[0] if len(names) == 1 else None)
    if name is None:
        parser.error(f"--pipeline has {len(names)} HuggingFaceAPIGenerator components {names}; choose with --component")
    inputs: dict[str, Any] = {"prompt": args.prompt}
    if kwargs:
        inputs["generation_kwargs"] = kwargs
    if callback is not None:
        inputs["streaming_callback"] = callback
    if args.stop:
        parser.error("--stop does not apply to --pipeline: stop words are part of the saved component")
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
    prompts: list[BatchItem] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as error:
            raise SystemExit(f"{path}:{number}: not JSON ({error})") from None
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise SystemExit(f'{path}:{number}: expected {{"prompt": "..."}} or a JSON string')
        given_id = item.get("id", number)
        key = str(given_id)
        if key in seen:
            raise SystemExit(f"{path}:{number}: duplicate id {key!r}")
        seen.add(key)
        prompts.append(BatchItem(key, given_id, item["prompt"], item.get("generation_kwargs")))
    return prompts


def _read_done(path: Path) -> dict[str, dict[str, Any]]:
    """The latest record per id in an output file. A torn last line (killed mid-write) is dropped."""
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    good: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
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
    temporary.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(temporary, path)


async def _run_batch_async(
    generator: HuggingFaceAPIGenerator,
    todo: list[BatchItem],
    out: TextIO,
    concurrency: int,
    base_kwargs: dict[str, Any],
    progress: Any,
) -> int:
    semaphore = asyncio.Semaphore(concurrency)
    failures = 0

    async def answer(item: BatchItem) -> None:
        nonlocal failures
        async with semaphore:
            try:
                kwargs = {**base_kwargs, **(item.generation_kwargs or {})}
                result = await generator.run_async(item.prompt, generation_kwargs=kwargs)
                record = {"id": item.id, "reply": result["replies"][0], "meta": result["meta"][0]}
            except Exception as error:  # every failure is recorded, and retried by the next run
                failures += 1
                record = {"id": item.id, "error": {"type": type(error).__name__, "message": str(error)}}
        # One write per complete line, flushed: an interruption tears at most the line being written.
        out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        out.flush()
        progress.update(1)

    await asyncio.gather(*(answer(item) for item in todo))
    await generator.aclose()
    return failures


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

    with (
        tqdm(total=len(prompts), initial=len(prompts) - len(todo), disable=args.no_progress, unit="prompt") as progress,
        args.output.open("a", encoding="utf-8") as out,
    ):
        failures = asyncio.run(
            _run_batch_async(generator, todo, out, args.concurrency, _generation_kwargs(args), progress)
        )
    # Complete pass: leave one line per prompt, in input order.
    records = _read_done(args.output)
    _rewrite(args.output, [json.dumps(records[i.key], ensure_ascii=False) for i in prompts if i.key in records])
    answered = sum(1 for item in prompts if "reply" in records.get(item.key, {}))
    print(f"{answered}/{len(prompts)} answered, {failures} failed (rerun the command to retry them)", file=sys.stderr)
    return 0 if failures == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `hf-api-generate`."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.batch:
        return _run_batch(args, parser)
    if not args.prompt:
        parser.error("give a prompt, or --batch")
    return _run_one(args, parser)


if __name__ == "__main__":
    raise SystemExit(main())
