"""
The clients of the fleet benchmark, one per process, started by `fleet.py` (which also runs the CLI).

- `raw`: the baseline, a minimal correct aiohttp loop: a fixed number of workers take prompts from one
  queue; each attempt goes to the next replica URL in turn (round-robin); a refused attempt (429, 503, TGI's
  `overloaded`) or a failed one (connect error, reset, timeout, any other status) is retried after a backoff
  (exponential with full jitter, `--backoff` doubling up to `--backoff-cap`), as often as it takes, and a
  prompt is recorded once, when its reply arrives. With `--window S` it runs on endless prompts instead, and
  measures its steady throughput over S seconds after `--warmup` seconds: the tokens the servers generated in
  that window (their `/fleet/stats`), a measure that does not depend on which replies happen to end in it.
- `ours`: the package as a user drives it: one `HuggingFaceAPIGenerator` given every replica URL
  (`api_params["url"]` a list), all prompts started at once through an `asyncio.Semaphore` large enough not
  to limit, so the generator's own admission decides. `--one-url` passes one URL as a string instead (what
  exists before replicas). A generator that refuses the list answers `{"available": false, "reason": ...}`.
- `single`: sequential single calls against one replica, raw aiohttp and ours (`client.py`'s peers, the same
  code as BENCHMARKS.md's "CPU per call"), in windows interleaved in a random order; one round per `round`
  line on stdin.

Replies go to `--out` (JSON lines: id, reply or error, the replica that answered); the summary is the last line
on stdout. Anything a library prints goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import resource
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fleet_server import prompt_text  # noqa: E402

CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 120.0


def _items(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def _write(path: str, records: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")


def _is_overload(status: int, data: bytes) -> bool:
    return status in (429, 503) or b'"overloaded"' in data


async def raw(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    urls = args.urls.split(",")
    rotation = itertools.cycle(urls)  # one shared rotation: attempts take the next replica in turn
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)
    counts = {"attempts": 0, "ok": 0, "refused": 0, "failed": 0}
    records: list[dict[str, Any]] = []
    done_at: list[float] = []
    rng = random.Random(args.seed)
    start = time.monotonic()
    if args.window:
        stop_at = start + args.warmup + args.window
        endless = (f"w{args.concurrency}-{n}" for n in itertools.count())
        queue: Any = None
    else:
        queue = deque(_items(args.prompts))

    def next_prompt() -> tuple[str, str] | None:
        if queue is None:
            if time.monotonic() >= stop_at:
                return None
            key = next(endless)
            return key, prompt_text(key)
        if not queue:
            return None
        item = queue.popleft()
        return item["id"], item["prompt"]

    async def worker() -> None:
        while (taken := next_prompt()) is not None:
            key, prompt = taken
            body = {"inputs": prompt, "parameters": {"max_new_tokens": args.max_new_tokens, "details": True}}
            attempt = 0
            while True:
                url = next(rotation)
                counts["attempts"] += 1
                try:
                    async with session.post(url + "/generate", data=json.dumps(body).encode(), headers=_JSON) as r:
                        data = await r.read()
                        status, replica = r.status, r.headers.get("x-fleet-replica")
                    if status == 200:
                        text = json.loads(data)["generated_text"]
                        break
                    counts["refused" if _is_overload(status, data) else "failed"] += 1
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    counts["failed"] += 1
                attempt += 1
                await asyncio.sleep(rng.uniform(0, min(args.backoff_cap, args.backoff * 2 ** (attempt - 1))))
            counts["ok"] += 1
            done_at.append(time.monotonic())
            if queue is not None:
                records.append({"id": key, "reply": text, "replica": replica, "attempts": attempt + 1})

    async def tokens_so_far() -> tuple[float, int]:
        """The servers' generated tokens, summed."""
        total = 0
        for url in urls:
            async with session.get(url + "/fleet/stats") as response:
                total += (await response.json())["tokens"]
        return time.monotonic(), total

    tasks = [asyncio.ensure_future(worker()) for _ in range(args.concurrency)]
    if queue is None:
        await asyncio.sleep(args.warmup)
        first = await tokens_so_far()
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        last = await tokens_so_far()
        # Steady state only: the window ends, the requests still in flight are abandoned (closing their
        # connections cancels them on the servers).
        for task in tasks:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.monotonic() - start
    await session.close()
    summary: dict[str, Any] = {"mode": "raw", "concurrency": args.concurrency, "wall": wall, **counts}
    if queue is None:
        low, high = start + args.warmup, start + args.warmup + args.window
        in_window = sum(low <= t < high for t in done_at)
        tokens_per_s = (last[1] - first[1]) / (last[0] - first[0])
        summary.update(
            window=args.window,
            warmup=args.warmup,
            replies_per_s=in_window / args.window,
            tokens_per_s=tokens_per_s,
        )
    else:
        _write(args.out, records)
    return summary


_JSON = {"Content-Type": "application/json"}


async def ours(args: argparse.Namespace) -> dict[str, Any]:
    from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator

    urls = args.urls.split(",")
    url: Any = urls[0] if args.one_url else urls
    try:
        generator = HuggingFaceAPIGenerator(
            "text_generation_inference", {"url": url}, generation_kwargs={"max_new_tokens": args.max_new_tokens}
        )
    except (TypeError, ValueError) as error:
        if "url" not in str(error):
            raise
        return {"mode": "ours", "available": False, "reason": f"{type(error).__name__}: {error}"}
    items = _items(args.prompts)
    gate = asyncio.Semaphore(args.semaphore)
    records: list[dict[str, Any]] = []

    async def one(item: dict[str, Any]) -> None:
        async with gate:
            try:
                result = await generator.run_async(item["prompt"])
            except Exception as error:  # a prompt the generator gave up on: lost for this run
                records.append({"id": item["id"], "error": {"type": type(error).__name__, "message": str(error)}})
                return
        meta = {k: v for k, v in result["meta"][0].items() if k != "tokens"}
        records.append({"id": item["id"], "reply": result["replies"][0], "meta": meta})

    start = time.monotonic()
    await asyncio.gather(*(one(item) for item in items))
    wall = time.monotonic() - start
    await generator.close_async()
    _write(args.out, records)
    failed = sum("error" in r for r in records)
    return {"mode": "ours", "available": True, "wall": wall, "ok": len(records) - failed, "failed": failed}


def single(args: argparse.Namespace) -> None:
    """Rounds on demand: the orchestrator alternates two of these processes (this src/ and an earlier one)."""
    import client  # benchmarks/client.py: the same raw floor and the same generator set-up as BENCHMARKS.md
    from fleet_server import reply_text

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    peers = {"raw": client.RawAiohttp(args.url, "tgi"), "ours": client.OursAsync(args.url, "tgi")}
    for peer in peers.values():
        loop.run_until_complete(peer.aopen())

    async def calls(peer: Any, n: int) -> str:
        reply = ""
        for _ in range(n):
            reply = await peer.acall()
        return reply

    expected = reply_text(client.PROMPT, client.CALL_TOKENS)
    for name, peer in peers.items():  # warm-up, and the replies checked once
        if (reply := loop.run_until_complete(calls(peer, 50))) != expected:
            raise SystemExit(f"{name} replied {reply[:60]!r}, expected {expected[:60]!r}")
    rng = random.Random(args.seed)
    _answer({"ready": True})
    for line in sys.stdin:
        if line.strip() != "round":
            break
        order = list(peers)
        rng.shuffle(order)
        result = {}
        for name in order:
            gc.collect()  # every window starts from the same collector state
            cpu, wall = time.process_time(), time.perf_counter()
            loop.run_until_complete(calls(peers[name], args.calls))
            result[name] = {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall, "n": args.calls}
        _answer(result)
    for peer in peers.values():
        loop.run_until_complete(peer.aclose())
    loop.close()


_out = sys.stdout


def _answer(payload: dict[str, Any]) -> None:
    _out.write(json.dumps(payload) + "\n")
    _out.flush()


def main() -> None:
    global _out
    parser = argparse.ArgumentParser(description="One client of the fleet benchmark.")
    parser.add_argument("mode", choices=["raw", "ours", "single"])
    parser.add_argument("--urls", default="", help="replica base URLs, comma-separated")
    parser.add_argument("--url", default="", help="single: the replica")
    parser.add_argument("--prompts", default="", help="JSON lines {id, prompt}")
    parser.add_argument("--out", default="", help="replies, JSON lines")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="of every prompt (replies end before it)")
    parser.add_argument("--concurrency", type=int, default=64, help="raw: workers")
    parser.add_argument("--backoff", type=float, default=0.05, help="raw: first backoff ceiling, seconds")
    parser.add_argument("--backoff-cap", type=float, default=1.0, help="raw: largest backoff ceiling, seconds")
    parser.add_argument("--window", type=float, default=0.0, help="raw: measure this many seconds on endless prompts")
    parser.add_argument("--warmup", type=float, default=0.0, help="raw --window: seconds before the window")
    parser.add_argument("--semaphore", type=int, default=1024, help="ours: prompts in run_async at once")
    parser.add_argument("--one-url", action="store_true", help="ours: the first URL, as a string")
    parser.add_argument("--calls", type=int, default=300, help="single: calls per window")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--log-level", default="WARNING", help="ours: the package's log level (DEBUG shows admission)")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity") and args.cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {args.cpu})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 1,024 workers hold 1,024 connections
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import logging

    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    # Our answers go to a private copy of stdout; anything a library prints goes to stderr.
    _out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    if args.mode == "single":
        single(args)
        return
    cpu = time.process_time()
    summary = asyncio.run(raw(args) if args.mode == "raw" else ours(args))
    summary["cpu"] = time.process_time() - cpu
    _answer(summary)


if __name__ == "__main__":
    main()
