"""
Which engine answers, and how each engine takes each generation parameter: the rule table.

Every generation parameter (TGI's names, as users give them) meets every engine in one cell of `RULES`:

- `Sent`: written into the request under the engine's own field, in the engine's own shape;
- `ByRequests`: `n` where the engine has no `n`: one request per reply;
- `ClientSide`: done by this client, the same everywhere (`return_full_text`, checking a JSON reply);
- `Refused`: the engine cannot honour it; the message says why and what to do instead.

Nothing else decides what reaches an engine: `Rules` (one engine on one protocol) refuses before any
request (`refusal`) and writes the sent cells into the body (`write`), which `_protocols` calls. No
parameter is dropped, and none is sent under a name the engine would ignore: vLLM, SGLang, llama.cpp,
llama-cpp-python and TGI answer 200 to fields they do not know, so a misnamed field would change nothing
and say nothing. README's parameter-by-engine matrix is this table rendered (`matrix_markdown`).

The engine is learned once, with the route (`_routing`): TGI answers `GET /info`; the OpenAI-compatible
engines name themselves in `GET /v1/models` (`engine_from_model_card`); Inference Providers are known by
their route. An engine that does not say what it is gets the OpenAI API's parameters only (`UNKNOWN`).
Facts per engine, with sources: ENGINES.md of the project's shared reference.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ._config import Grammar


@dataclass(frozen=True, slots=True)
class Engine:
    """An inference engine: `name` for `meta["engine"]` and `api_params["engine"]`, `title` for people."""

    name: str
    title: str


TGI = Engine("tgi", "TGI")
VLLM = Engine("vllm", "vLLM")
SGLANG = Engine("sglang", "SGLang")
LLAMA_CPP = Engine("llama.cpp", "llama.cpp")
LLAMA_CPP_PYTHON = Engine("llama-cpp-python", "llama-cpp-python")
TRANSFORMERS = Engine("transformers", "transformers serve")
PROVIDERS = Engine("inference-providers", "Inference Providers")
#: An OpenAI-compatible server that did not say which engine it is: the OpenAI API's parameters only.
UNKNOWN = Engine("unknown", "this OpenAI-compatible server (an engine it did not name)")

ENGINES = (TGI, VLLM, SGLANG, LLAMA_CPP, LLAMA_CPP_PYTHON, TRANSFORMERS, PROVIDERS, UNKNOWN)
ENGINE_NAMES = tuple(engine.name for engine in ENGINES)
_BY_NAME = {engine.name: engine for engine in ENGINES}


def engine_named(name: str) -> Engine:
    """The engine of a name in `ENGINE_NAMES` (as `api_params["engine"]` gives it)."""
    return _BY_NAME[name]


# --- telling engines apart --------------------------------------------------------------------------

# `owned_by` of the models in GET /v1/models, as each engine writes it (llama-cpp-python: "me").
_OWNERS = {"vllm": VLLM, "sglang": SGLANG, "llamacpp": LLAMA_CPP, "me": LLAMA_CPP_PYTHON}


def engine_from_model_card(card: Mapping[str, Any]) -> Engine | None:
    """The engine that wrote this entry of `GET /v1/models`, when the entry tells; else None."""
    engine = _OWNERS.get(card.get("owned_by"))  # type: ignore[arg-type]
    if engine is not None:
        return engine
    status = card.get("status")
    # transformers serve says whether each listed model is loaded; no other engine has that field.
    if isinstance(status, Mapping) and "value" in status:
        return TRANSFORMERS
    return None


def may_be_tgi(card: Mapping[str, Any]) -> bool:
    """TGI's `/v1/models` lists its model as owned by itself; `GET /info` then tells for sure."""
    return isinstance(card.get("id"), str) and card.get("owned_by") == card.get("id")


# --- the cells --------------------------------------------------------------------------------------

#: Puts a parameter into a request: `(target, value, params)`; `target` is the JSON body, or TGI's
#: `parameters` object; `params` are all of the call's parameters (some cells read two of them).
Write = Callable[[dict[str, Any], Any, Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Refused:
    """The engine cannot honour the parameter: why, and what to do instead (when something can be done)."""

    why: str
    instead: str = ""
    shown: ClassVar[str] = "✗"


@dataclass(frozen=True, slots=True)
class Sent:
    """Sent as the engine's own field (`shown` names it); `refuse` picks out values the field cannot take."""

    shown: str
    write: Write
    refuse: Callable[[Any], Refused | None] | None = None


@dataclass(frozen=True, slots=True)
class ByRequests:
    """`n` on an engine without it: one request per reply, with seeds derived from the user's (`derive_seeds`)."""

    shown: ClassVar[str] = "k requests"


@dataclass(frozen=True, slots=True)
class ClientSide:
    """Done by this client, the same on every engine."""

    shown: ClassVar[str] = "client-side"


Cell = Sent | ByRequests | ClientSide | Refused


@dataclass(frozen=True, slots=True)
class Split:
    """An engine that takes a parameter differently on `/v1/completions` and `/v1/chat/completions`."""

    completions: Cell
    chat: Cell


# --- writers -----------------------------------------------------------------------------------------


def _as(field: str) -> Sent:
    """The value as it is, under `field`."""

    def write(target: dict[str, Any], value: Any, params: Mapping[str, Any]) -> None:
        target[field] = value

    return Sent(f"`{field}`", write)


def _in_generation_config(name: str) -> Sent:
    """transformers serve: a `generate()` argument inside `generation_config` (a JSON string, see `_finish`)."""

    def write(target: dict[str, Any], value: Any, params: Mapping[str, Any]) -> None:
        target.setdefault("generation_config", {})[name] = value

    return Sent(f"`generation_config.{name}`", write)


def _if_true(field: str, shown: str) -> Sent:
    """A boolean the engine takes as it is (it also means nothing when false)."""

    def write(target: dict[str, Any], value: Any, params: Mapping[str, Any]) -> None:
        if value:
            target[field] = True

    return Sent(shown, write)


def _nothing(shown: str) -> Sent:
    """A parameter whose effect the protocol writes from all the parameters at once (`do_sample`: `_finish`)."""

    def write(target: dict[str, Any], value: Any, params: Mapping[str, Any]) -> None:
        return None

    return Sent(shown, write)


def _grammar(shown: str, *, json: Write, regex: Write | None, why_not_regex: str = "", tgi: bool = False) -> Sent:
    """`grammar`, written by `json` or `regex` according to its kind; a kind without a writer is refused."""

    def write(target: dict[str, Any], value: Grammar, params: Mapping[str, Any]) -> None:
        writer = json if value.kind == "json" else regex
        assert writer is not None  # refused before
        writer(target, value, params)

    def refuse(value: Grammar) -> Refused | None:
        if value.kind == "regex" and regex is None:
            return Refused(why_not_regex, "constrain to a JSON schema ({'type': 'json', ...}) instead")
        if tgi and value.kind == "json" and not isinstance(value.value.get("properties"), Mapping):
            # TGI answers 422 to any other schema; saying so here names the parameter.
            return Refused("TGI takes JSON schemas with top-level 'properties' only", "describe an object")
        return None

    return Sent(shown if regex is not None else f"{shown} (JSON only)", write, refuse)


def _tgi_grammar(field: str) -> Write:
    """TGI's own tagged form, also under `response_format` on its chat route."""

    def write(target: dict[str, Any], value: Grammar, params: Mapping[str, Any]) -> None:
        target[field] = {"type": value.kind, "value": value.value}

    return write


def _openai_json_schema(target: dict[str, Any], value: Grammar, params: Mapping[str, Any]) -> None:
    """OpenAI's `response_format` for a JSON schema (SGLang, the router, and servers we do not know)."""
    schema: dict[str, Any] = {"name": value.name, "schema": value.value}
    if value.strict is not None:
        schema["strict"] = value.strict
    target["response_format"] = {"type": "json_schema", "json_schema": schema}


def _vllm_structured(target: dict[str, Any], value: Grammar, params: Mapping[str, Any]) -> None:
    # vLLM >= 0.12 knows only `structured_outputs` (the guided_* fields are gone and would be ignored).
    target["structured_outputs"] = {value.kind: value.value}


def _sglang_json_string(target: dict[str, Any], value: Grammar, params: Mapping[str, Any]) -> None:
    target["json_schema"] = json.dumps(value.value)  # SGLang's completions take the schema as a string


def _regex_field(target: dict[str, Any], value: Grammar, params: Mapping[str, Any]) -> None:
    target["regex"] = value.value


def _llama_cpp_json_schema(target: dict[str, Any], value: Grammar, params: Mapping[str, Any]) -> None:
    target["json_schema"] = value.value  # llama.cpp turns it into a grammar, on both routes


def _llama_cpp_python_json(target: dict[str, Any], value: Grammar, params: Mapping[str, Any]) -> None:
    target["response_format"] = {"type": "json_object", "schema": value.value}


def top_tokens_wanted(params: Mapping[str, Any]) -> int | None:
    """How many alternatives per token `meta["tokens"]` lists (0: none), or None without token details."""
    top: int = params.get("top_n_tokens") or 0
    return top if params.get("details") or top else None


def _token_details(*, chat_at_least: int = 0) -> Split:
    """
    `details` / `top_n_tokens` as OpenAI's log-probabilities: how many alternatives (an int) on completions,
    `logprobs` + `top_logprobs` on chat. Asked for none, SGLang's and llama.cpp's completions return no
    log-probability at all, and llama.cpp's chat neither: there they are asked for one, which
    `meta["tokens"]` leaves out (`top_tokens_wanted`).
    """

    def completions(target: dict[str, Any], value: Any, params: Mapping[str, Any]) -> None:
        if (top := top_tokens_wanted(params)) is not None:
            target["logprobs"] = max(top, 1)

    def chat(target: dict[str, Any], value: Any, params: Mapping[str, Any]) -> None:
        if (top := top_tokens_wanted(params)) is not None:
            target["logprobs"] = True
            target["top_logprobs"] = max(top, chat_at_least)

    return Split(Sent("`logprobs`", completions), Sent("`logprobs`", chat))


# --- refusals, reused -------------------------------------------------------------------------------

_TGI_NATIVE = "TGI's native routes take it: api_params['protocol'] = 'tgi' (or 'auto')"
_NAME_THE_ENGINE = (
    "if you know which engine serves it, say so: api_params['engine'] = 'vllm' (or 'sglang', 'llama.cpp', "
    "'llama-cpp-python', 'transformers', 'tgi')"
)
_NOT_OPENAI = Refused(
    "it is not part of the OpenAI API, and the server did not say which engine it is", _NAME_THE_ENGINE
)
_ROUTER = "the Inference Providers API has no such field"
_PICK_ENGINE = "vLLM, SGLang or TGI take it"


def _tgi_v1(why: str) -> Refused:
    return Refused(f"TGI's OpenAI-compatible routes {why}", _TGI_NATIVE)


_N_NATIVE = _as("n")
_N_BY_REQUESTS = ByRequests()
_CLIENT = ClientSide()


# --- the table ----------------------------------------------------------------------------------------

#: The columns of the table: TGI's native protocol and TGI's OpenAI-compatible routes differ, so they
#: have a column each; every other engine has one (with a `Split` where its two routes differ).
COLUMNS = (
    "tgi",
    "tgi /v1",
    VLLM.name,
    SGLANG.name,
    LLAMA_CPP.name,
    LLAMA_CPP_PYTHON.name,
    TRANSFORMERS.name,
    PROVIDERS.name,
    UNKNOWN.name,
)
_OPENAI_COLUMNS = COLUMNS[1:]


def _row(default: Cell | Split, **cells: Cell | Split) -> dict[str, Cell | Split]:
    """A row: `default` in every OpenAI-compatible column, `cells` where a column differs (names with `_`)."""
    row: dict[str, Cell | Split] = dict.fromkeys(_OPENAI_COLUMNS, default)
    for key, cell in cells.items():
        column = {"tgi_v1": "tgi /v1", "llama_cpp": "llama.cpp", "llama_cpp_python": "llama-cpp-python"}.get(
            key, key.replace("_", "-")
        )
        assert column in COLUMNS, column
        row[column] = cell
    return row


RULES: dict[str, dict[str, Cell | Split]] = {
    "max_new_tokens": _row(_as("max_tokens"), tgi=_as("max_new_tokens")),
    "temperature": _row(_as("temperature"), tgi=_as("temperature")),
    "top_k": _row(
        _as("top_k"),
        tgi=_as("top_k"),
        tgi_v1=_tgi_v1("have no top_k"),
        transformers=_in_generation_config("top_k"),
        inference_providers=Refused(_ROUTER),
        unknown=_NOT_OPENAI,
    ),
    "top_p": _row(_as("top_p"), tgi=_as("top_p")),
    "typical_p": _row(
        Refused("it has no typical sampling", "use top_p"),
        tgi=_as("typical_p"),
        tgi_v1=_tgi_v1("have no typical_p"),
        llama_cpp=_as("typical_p"),
        transformers=_in_generation_config("typical_p"),
        inference_providers=Refused(_ROUTER),
        unknown=_NOT_OPENAI,
    ),
    "do_sample": _row(
        _nothing("`temperature: 0` when false"),
        tgi=_as("do_sample"),
        transformers=_nothing("`generation_config.do_sample`"),
    ),
    "seed": _row(_as("seed"), tgi=_as("seed")),
    "repetition_penalty": _row(
        _as("repetition_penalty"),
        tgi=_as("repetition_penalty"),
        tgi_v1=Split(_as("repetition_penalty"), _tgi_v1("chat route has no repetition_penalty")),
        llama_cpp=_as("repeat_penalty"),
        llama_cpp_python=_as("repeat_penalty"),
        transformers=_in_generation_config("repetition_penalty"),
        inference_providers=Refused(_ROUTER),
        unknown=_NOT_OPENAI,
    ),
    "frequency_penalty": _row(
        _as("frequency_penalty"),
        tgi=_as("frequency_penalty"),
        transformers=Refused(
            "it turns frequency_penalty into repetition_penalty = 1 + frequency_penalty, a different penalty",
            "use repetition_penalty",
        ),
    ),
    "stop": _row(_as("stop"), tgi=_as("stop")),
    "n": _row(_N_BY_REQUESTS, tgi=_N_BY_REQUESTS, vllm=_N_NATIVE, sglang=_N_NATIVE),
    "best_of": _row(
        Refused("it has no best_of (a server may accept the field and ignore it)", "use n and pick a reply"),
        tgi=_as("best_of"),
        tgi_v1=_tgi_v1("have no best_of"),
        unknown=Split(_as("best_of"), Refused("OpenAI's chat API has no best_of", "use n and pick a reply")),
    ),
    "grammar": _row(
        Split(
            Refused("OpenAI's completions API constrains no output", "use api_params['protocol'] = 'chat'"),
            _grammar("`response_format`", json=_openai_json_schema, regex=None, why_not_regex=_ROUTER),
        ),
        tgi=_grammar("`grammar`", json=_tgi_grammar("grammar"), regex=_tgi_grammar("grammar"), tgi=True),
        tgi_v1=Split(
            _tgi_v1("apply no grammar on /v1/completions"),
            _grammar(
                "`response_format`",
                json=_tgi_grammar("response_format"),
                regex=_tgi_grammar("response_format"),
                tgi=True,
            ),
        ),
        vllm=_grammar("`structured_outputs`", json=_vllm_structured, regex=_vllm_structured),
        sglang=Split(
            _grammar("`json_schema`, `regex`", json=_sglang_json_string, regex=_regex_field),
            _grammar("`response_format`, `regex`", json=_openai_json_schema, regex=_regex_field),
        ),
        llama_cpp=_grammar(
            "`json_schema`",
            json=_llama_cpp_json_schema,
            regex=None,
            why_not_regex="llama.cpp constrains output with JSON schemas and GBNF grammars, not regular expressions",
        ),
        llama_cpp_python=Split(
            Refused("its completions take GBNF grammars only", "use api_params['protocol'] = 'chat'"),
            _grammar(
                "`response_format`",
                json=_llama_cpp_python_json,
                regex=None,
                why_not_regex="llama-cpp-python constrains output with JSON schemas and GBNF grammars only",
            ),
        ),
        transformers=Refused("it constrains no output (it answers 422 to response_format)", _PICK_ENGINE),
        unknown=Split(
            Refused("OpenAI's completions API constrains no output", "use api_params['protocol'] = 'chat'"),
            _grammar(
                "`response_format`",
                json=_openai_json_schema,
                regex=None,
                why_not_regex="OpenAI's API constrains output to JSON schemas only",
            ),
        ),
    ),
    "details": _row(
        _token_details(),
        tgi=_nothing("`details` (always sent)"),
        tgi_v1=Split(_tgi_v1("return no log-probabilities on /v1/completions"), _token_details().chat),
        llama_cpp=_token_details(chat_at_least=1),
        llama_cpp_python=_token_details(chat_at_least=1),
        transformers=Refused("it returns no log-probabilities", _PICK_ENGINE),
    ),
    "top_n_tokens": _row(
        _token_details(),
        tgi=_as("top_n_tokens"),
        tgi_v1=Split(_tgi_v1("return no log-probabilities on /v1/completions"), _token_details().chat),
        llama_cpp=_token_details(chat_at_least=1),
        llama_cpp_python=_token_details(chat_at_least=1),
        transformers=Refused("it returns no log-probabilities", _PICK_ENGINE),
    ),
    "decoder_input_details": _row(
        Refused("this client reads prompt log-probabilities from TGI's native answers only", _TGI_NATIVE),
        tgi=_if_true("decoder_input_details", "`decoder_input_details`"),
    ),
    "truncate": _row(
        Refused("it has no per-request prompt truncation"),
        tgi=_as("truncate"),
        tgi_v1=_tgi_v1("do not truncate prompts"),
        vllm=_as("truncate_prompt_tokens"),
    ),
    "adapter_id": _row(
        Refused("it serves no LoRA adapter per request"),
        tgi=_as("adapter_id"),
        tgi_v1=_as("model"),
        vllm=_as("model"),
        sglang=_as("lora_path"),
        llama_cpp=Refused(
            "llama.cpp selects adapters by number and scale (its `lora` field), not by id", "use vLLM, SGLang or TGI"
        ),
        llama_cpp_python=Refused("llama-cpp-python loads adapters when it starts, not per request"),
        unknown=Refused(
            "the OpenAI API has no adapters",
            "if the server serves the adapter as a model, name it in api_params['model']",
        ),
    ),
    "watermark": _row(
        Refused("it has no watermarking"),
        tgi=_if_true("watermark", "`watermark`"),
        vllm=Refused("vLLM watermarks only with a watermark configured at launch, and says nothing otherwise"),
    ),
    "return_full_text": _row(_CLIENT, tgi=_CLIENT),
    "validate_schema": _row(_CLIENT, tgi=_CLIENT),
}


#: Routes that do not know `stream_options` (and would ignore it): TGI's completions, llama-cpp-python's.
_NO_STREAM_OPTIONS = {
    ("tgi /v1", "completions"),
    (LLAMA_CPP_PYTHON.name, "completions"),
    (LLAMA_CPP_PYTHON.name, "chat"),
}


def column_of(engine: Engine, protocol: str) -> str:
    """The table's column for an engine reached through a protocol (`tgi`, `completions` or `chat`)."""
    if engine is TGI:
        return "tgi" if protocol == "tgi" else "tgi /v1"
    return engine.name


def _cell(cell: Cell | Split, protocol: str) -> Cell:
    if isinstance(cell, Split):
        return cell.chat if protocol == "chat" else cell.completions
    return cell


# --- one engine on one protocol ----------------------------------------------------------------------


class Rules:
    """
    The table's cells for one engine reached through one protocol, and the rules that involve several
    parameters at once (greedy unless asked to sample; engine defaults).
    """

    def __init__(self, engine: Engine, protocol: str, description: str) -> None:
        self.engine = engine
        self.protocol = protocol
        self._description = description
        self._column = column_of(engine, protocol)
        self.cells: dict[str, Cell] = {param: _cell(row[self._column], protocol) for param, row in RULES.items()}
        #: Whether one request gives `n` replies (else the flow makes one request per reply).
        self.sends_n = isinstance(self.cells["n"], Sent)
        #: Whether a stream may ask for its usage (`stream_options`).
        self.stream_options = (self._column, protocol) not in _NO_STREAM_OPTIONS

    def refusal(self, key: str, value: Any) -> str | None:
        """The message refusing `generation_kwargs[key] = value` here, or None when it is honoured."""
        cell = self.cells.get(key)
        refused = cell if isinstance(cell, Refused) else None
        if isinstance(cell, Sent) and cell.refuse is not None:
            refused = cell.refuse(value)
        if refused is None:
            return None
        message = (
            f"generation_kwargs[{key!r}] cannot be honoured by {self.engine.title} through "
            f"{self._description}: {refused.why}"
        )
        return f"{message}; {refused.instead}" if refused.instead else message

    def write(self, target: dict[str, Any], params: Mapping[str, Any], stop: list[str]) -> None:
        """Writes every parameter into `target` as this engine takes it (all were checked by `refusal`)."""
        cells = self.cells
        for key, value in params.items():
            cell = cells[key]
            if isinstance(cell, Sent):
                cell.write(target, value, params)
        if stop:
            cell = cells["stop"]
            assert isinstance(cell, Sent)
            cell.write(target, stop, params)
        _finish(self._column, target, params)


# Values that leave the distribution as it is: they do not ask for sampling (TGI drops top_p 1.0 too).
_SAMPLING_PARAMETERS = ("temperature", "top_k", "top_p", "typical_p")
_NEUTRAL: dict[str, Any] = {"top_p": 1, "temperature": 0}


def asks_to_sample(params: Mapping[str, Any]) -> bool:
    """
    Whether the parameters ask for sampling: `do_sample`, or a temperature / top_k / top_p / typical_p that
    changes the distribution. TGI decodes greedily otherwise, so every engine does here.
    """
    if params.get("do_sample") is False:
        return False
    return params.get("do_sample") is True or any(
        key in params and params[key] != _NEUTRAL.get(key) for key in _SAMPLING_PARAMETERS
    )


def _finish(column: str, target: dict[str, Any], params: Mapping[str, Any]) -> None:
    """What depends on several parameters, or on none: greedy decoding, engine defaults."""
    if column == "tgi":
        # TGI rejects temperature 0 and top_p 1.0; both mean "no change to the distribution".
        if target.get("temperature") == 0:
            del target["temperature"]
            target["do_sample"] = False
        if target.get("top_p") == 1:
            del target["top_p"]
        if params.get("do_sample") is False:
            # TGI samples whenever a warper changes the distribution, do_sample or not; greedy means greedy.
            for key in _SAMPLING_PARAMETERS:
                target.pop(key, None)
        return
    # OpenAI-compatible engines sample by default; greedy unless asked keeps them alike (and like TGI).
    sampling = asks_to_sample(params)
    if not sampling:
        target["temperature"] = 0
    if column == LLAMA_CPP_PYTHON.name:
        target.setdefault("repeat_penalty", 1.0)  # its default is 1.1: a penalty nobody asked for
    if column == TRANSFORMERS.name:
        config = target.get("generation_config")
        if sampling:  # transformers serve ignores temperature / top_p unless told to sample
            config = target["generation_config"] = {**(config or {}), "do_sample": True}
        if config is not None:
            target["generation_config"] = json.dumps(config)


def requests_for_replies(params: Mapping[str, Any], sends_n: bool) -> list[dict[str, Any]]:
    """
    The parameters of each request that together give `params["n"]` replies: one request with `n` where the
    engine has it (`Rules.sends_n`), else one request per reply, without `n`, each with its seed (when the user
    gave one). Always at least one; `params` is not changed.
    """
    n = params.get("n", 1)
    if sends_n or n == 1:
        return [dict(params)]
    single = {key: value for key, value in params.items() if key != "n"}
    seeds = derive_seeds(params.get("seed"), n)
    return [single if seed is None else {**single, "seed": seed} for seed in seeds]


def derive_seeds(seed: int | None, count: int) -> list[int | None]:
    """
    The seeds of `count` requests standing for `n` replies: the user's seed for the first (so `n: 1` is the
    same request as without `n`), then the next ones, wrapping within the engines' signed 64-bit range.
    Without a seed, each request lets the server pick one.
    """
    if seed is None:
        return [None] * count
    return [(seed + i) % 2**63 for i in range(count)]


# --- the README's matrix ----------------------------------------------------------------------------

_COLUMN_TITLES = {
    "tgi": "TGI",
    "tgi /v1": "TGI `/v1`",
    **{engine.name: engine.title for engine in ENGINES if engine is not TGI},
    UNKNOWN.name: "other",
}


def _shown(cell: Cell | Split) -> str:
    if isinstance(cell, Split):
        completions, chat = cell.completions.shown, cell.chat.shown
        return completions if completions == chat else f"completions: {completions}<br>chat: {chat}"
    return cell.shown


def matrix_markdown() -> str:
    """The parameter-by-engine matrix of README.md, rendered from `RULES`."""
    lines = [
        "| `generation_kwargs` | " + " | ".join(_COLUMN_TITLES[column] for column in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for param, row in RULES.items():
        lines.append(f"| `{param}` | " + " | ".join(_shown(row[column]) for column in COLUMNS) + " |")
    return "\n".join(lines) + "\n"
