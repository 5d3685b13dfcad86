"""
Checking a reply that `generation_kwargs["grammar"]` constrained.

An engine that does not know a field answers 200 all the same (vLLM, SGLang, llama.cpp, TGI), and so does
one whose constraint gave up halfway (the reply cut by `max_new_tokens`): a 200 proves nothing. So a reply
asked to be JSON must parse, one asked to match a regular expression must match it whole, and, when the
user asks (`validate_schema`), the JSON must follow the schema; otherwise the call fails with
`StructuredOutputError`, which keeps the reply for whoever wants to look at it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._config import Grammar
from .errors import StructuredOutputError

__all__ = ["StructuredOutputError", "check_structured_reply"]


def check_structured_reply(
    text: str, grammar: Grammar, *, validate_schema: bool, finish_reason: str | None, where: str, engine: str
) -> Any:
    """
    Checks one reply (the generated text, stop words cut, without the prompt) against its grammar.

    :param finish_reason: The server's reason, normalised (`length` explains a cut document).
    :param where: The request, for the message (`POST http://.../v1/completions`).
    :param engine: Who generated it, for the message (`vLLM`).
    :returns: The parsed JSON document for a JSON grammar, else None.
    :raises StructuredOutputError: If the reply does not follow the grammar.
    """
    cut = (
        "; it was cut by max_new_tokens (finish_reason 'length'): raise generation_kwargs['max_new_tokens']"
        if finish_reason == "length"
        else f"; {engine} did not constrain it"
    )
    if grammar.kind == "regex":
        if re.fullmatch(grammar.value, text) is None:
            message = f"{where}: the reply does not match generation_kwargs['grammar'] {grammar.value!r}{cut}"
            raise StructuredOutputError(message, text)
        return None
    try:
        document = json.loads(text)
    except ValueError as error:
        raise StructuredOutputError(
            f"{where}: the reply is not the JSON document asked for ({error}){cut}", text
        ) from None
    if validate_schema:
        from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # checked in parse_grammar

        problem = next(iter(Draft202012Validator(grammar.value).iter_errors(document)), None)
        if problem is not None:
            path = "/".join(str(part) for part in problem.absolute_path) or "the document"
            message = f"{where}: the reply does not follow the JSON schema at {path}: {problem.message}"
            raise StructuredOutputError(f"{message}; {engine} constrained it in part or not at all", text)
    return document
