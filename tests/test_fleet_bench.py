"""
The fleet benchmark's pieces (benchmarks/fleet_server.py, benchmarks/fleet.py): the fake engine batches, queues and
refuses as documented and answers each prompt with its own reply; the checker catches a lost, a duplicated and a
wrong reply; the ideal time is the formula. No timing is asserted: the engine's clock is only driven by hand here,
and the live server is asked things whose answers do not depend on how fast the machine is.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> ModuleType:
    """A benchmarks/ script as a module; fleet.py imports fleet_server by name, as when run as a script."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    if name == "fleet_server":
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(f"fleet_bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


server_module = _load("fleet_server")
fleet = _load("fleet")


# --- the engine, by hand -----------------------------------------------------------------------------


def _sequence(tokens: int, done: list[str], name: str) -> Any:
    return server_module.Sequence(name, tokens, on_done=lambda: done.append(name))


def test_the_engine_runs_a_batch_queues_the_rest_and_refuses_past_its_limit() -> None:
    engine = server_module.Engine(batch_size=2, queue_limit=3)
    done: list[str] = []
    sequences = [_sequence(2, done, name) for name in "abcd"]
    assert [engine.offer(s) for s in sequences] == [True, True, True, False]
    engine.step(0.0)  # an idle engine starts what it admitted at once: two run, one waits
    assert [s.prompt for s in engine.running] == ["a", "b"]
    assert [s.prompt for s in engine.waiting] == ["c"]
    for finished in (engine.step(1.0), engine.step(2.0)):
        for sequence in finished:
            sequence.on_done()
    assert done == ["a", "b"]  # two tokens each, then their slots go to the one waiting
    assert [s.prompt for s in engine.running] == ["c"]
    counts = engine.counts
    assert (counts.admitted, counts.refused, counts.completed, counts.tokens) == (3, 1, 2, 4)
    assert counts.peak_running == 2


def test_throughput_grows_with_concurrency_up_to_the_batch_size() -> None:
    def steps_to_finish(n: int) -> int:
        engine = server_module.Engine(batch_size=4, queue_limit=100)
        for i in range(n):
            engine.offer(_sequence(10, [], str(i)))
        engine.step(0.0)
        steps = 0
        while engine.busy:
            engine.step(float(steps))
            steps += 1
        return steps

    assert steps_to_finish(1) == steps_to_finish(4) == 10  # up to the batch size, more requests in the same time
    assert steps_to_finish(8) == 20  # beyond it they queue


def test_a_cancelled_sequence_leaves_the_engine() -> None:
    engine = server_module.Engine(batch_size=1, queue_limit=2)
    first, second = _sequence(5, [], "first"), _sequence(5, [], "second")
    engine.offer(first)
    engine.offer(second)
    engine.step(0.0)
    engine.cancel(second)  # waiting
    engine.cancel(first)  # running
    assert not engine.busy
    assert engine.counts.cancelled == 2


def test_replies_are_a_function_of_the_prompt() -> None:
    one, other = server_module.prompt_text("p1"), server_module.prompt_text("p2")
    assert server_module.reply_text(one, 40) == server_module.reply_text(one, 40)
    assert server_module.reply_text(one, 40) != server_module.reply_text(other, 40)
    assert server_module.reply_text(one, 40).startswith(server_module.reply_text(one, 7))
    # Each prompt has its own length, in mean * (1 ± spread); max_new_tokens cuts it, the EOS costs a step.
    lengths = [server_module.natural_length(server_module.prompt_text(f"p{i}"), 64, 0.5) for i in range(200)]
    assert min(lengths) >= 32
    assert max(lengths) <= 96
    assert len(set(lengths)) > 20
    natural = server_module.natural_length(one, 64, 0.5)
    assert server_module.expected_reply(one, 1000, 64, 0.5) == (server_module.reply_text(one, natural), natural + 1)
    assert server_module.expected_reply(one, 10, 64, 0.5) == (server_module.reply_text(one, 10), 10)


# --- the live server ---------------------------------------------------------------------------------


class Replica:
    def __init__(self, *options: str) -> None:
        command = [sys.executable, str(BENCHMARKS / "fleet_server.py"), *options]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{self.process.stdout.readline().split()[1]}"

    def command(self, line: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def post(self, path: str, prompt: str, tokens: int) -> tuple[int, bytes]:
        body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": tokens, "details": True}}).encode()
        request = urllib.request.Request(self.url + path, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


@pytest.fixture
def replica() -> Iterator[Replica]:
    # Two slots, three admitted at most, steps of 10 ms; replies of 4,000 tokens unless max_new_tokens is lower.
    server = Replica("--batch-size=2", "--queue-limit=3", "--step-seconds=0.01", "--tokens=4000", "--spread=0")
    yield server
    server.stop()


@pytest.fixture
def instant() -> Iterator[Replica]:
    # Answers at once; replies of 3 to 9 tokens, by the prompt.
    server = Replica("--step-seconds=0", "--tokens=6", "--spread=0.5")
    yield server
    server.stop()


def _hold(url: str, prompt: str) -> socket.socket:
    """A request that keeps its slot (4,000 tokens: 40 s), until its connection is closed."""
    body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": 8000}}).encode()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST /generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def test_the_server_refuses_past_its_queue_limit_as_tgi_does(replica: Replica) -> None:
    info = json.loads(urllib.request.urlopen(replica.url + "/info", timeout=10).read())
    assert info["max_concurrent_requests"] == 3
    assert info["router"] == "text-generation-router"
    held = [_hold(replica.url, f"held {i}") for i in range(3)]
    try:
        deadline = time.monotonic() + 30
        while replica.command("stats")["admitted"] < 3:  # the three are in (running or waiting)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, body = replica.post("/generate", "one too many", 4)
        assert status == 429
        assert json.loads(body) == {"error": "Model is overloaded", "error_type": "overloaded"}
        # The stream route answers 200 and sends the refusal as its only event, as TGI's does.
        status, body = replica.post("/generate_stream", "one too many", 4)
        assert status == 200
        assert body.decode().startswith('data: {"error":"Model is overloaded","error_type":"overloaded"}')
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 30
    while (stats := replica.command("stats"))["cancelled"] < 3:  # closed connections cancel their sequences
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert (stats["admitted"], stats["refused"], stats["completed"]) == (3, 2, 0)


def test_the_server_answers_each_prompt_with_its_own_reply(instant: Replica) -> None:
    prompt = server_module.prompt_text("p7")
    text, steps = server_module.expected_reply(prompt, 100, 6, 0.5)
    status, body = instant.post("/generate", prompt, 100)
    assert status == 200
    answer = json.loads(body)
    assert answer["generated_text"] == text
    details = answer["details"]
    assert (details["finish_reason"], details["generated_tokens"]) == ("eos_token", steps)
    assert details["tokens"][-1]["special"]  # the end of sequence: a token, no text of the reply
    assert "".join(t["text"] for t in details["tokens"] if not t["special"]) == text
    # Cut by max_new_tokens before its end.
    answer = json.loads(instant.post("/generate", prompt, 2)[1])
    assert answer["generated_text"] == server_module.reply_text(prompt, 2)
    assert (answer["details"]["finish_reason"], answer["details"]["generated_tokens"]) == ("length", 2)
    status, body = instant.post("/generate_stream", prompt, 100)
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert [e["index"] for e in events] == list(range(1, steps + 1))
    assert events[-1]["generated_text"] == text
    assert events[-1]["details"]["finish_reason"] == "eos_token"
    stats = instant.command("reset")
    assert (stats["admitted"], stats["completed"]) == (0, 0)


def test_a_crash_reports_its_counts_then_the_process_is_gone(replica: Replica) -> None:
    replica.post("/generate", "before the crash", 2)
    stats = replica.command("crash")
    assert stats["completed"] == 1
    assert stats["aborted"] == 0
    assert replica.process.wait(10) != 0


# --- the orchestrator's arithmetic and checks --------------------------------------------------------


def test_the_checker_catches_lost_duplicated_wrong_and_unknown_replies() -> None:
    expected = {"a": "reply a", "b": "reply b", "c": "reply c", "d": "reply d"}
    records = [
        {"id": "a", "reply": "reply a"},
        {"id": "b", "reply": "reply b"},
        {"id": "b", "reply": "reply b"},  # duplicated
        {"id": "c", "reply": "reply a"},  # another prompt's reply
        {"id": "d", "error": {"type": "OverloadedError", "message": "..."}},  # given up: lost
        {"id": "e", "reply": "reply e"},  # not a prompt of this batch
    ]
    check = fleet.check_replies(expected, records)
    assert (check["lost"], check["duplicated"], check["wrong"], check["unknown"]) == (1, 1, 1, 1)
    assert check["examples"]["lost"] == ["d"]
    assert check["examples"]["duplicated"] == ["b"]
    assert check["errors"] == {"OverloadedError": 1}
    assert not check["ok"]
    assert fleet.check_replies(expected, [{"id": k, "reply": v} for k, v in expected.items()])["ok"]


def test_the_ideal_time_is_the_work_over_the_capacity_alive() -> None:
    capacities = {name: fleet.capacity(speed, 32, 0.025) for name, speed in zip(fleet.NAMES, fleet.SPEEDS, strict=True)}
    assert sum(capacities.values()) == 5760  # 32 slots x 4.5 speed / 25 ms
    assert fleet.ideal_seconds(2000 * 64, capacities) == pytest.approx(2000 * 64 / 5760)
    # r3 (2,560 tokens/s) out from 6 s to 9 s: its 3 s of work is done by the others' and its own later time.
    with_kill = fleet.ideal_seconds(2000 * 64, capacities, [("r3", 6.0, 9.0)])
    assert with_kill == pytest.approx((2000 * 64 + 3 * 2560) / 5760)
    # An outage after the work is done changes nothing; one from the start delays it.
    assert fleet.ideal_seconds(5760, capacities, [("r3", 5.0, 9.0)]) == pytest.approx(1.0)
    assert fleet.ideal_seconds(3200, capacities, [("r3", 0.0, 100.0)]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no replica"):
        fleet.ideal_seconds(10, {"r1": 1.0}, [("r1", 0.0, float("inf"))])
