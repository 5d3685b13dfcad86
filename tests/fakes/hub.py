"""Fakes of the Hugging Face Hub (model info) and of the Inference Providers router.

Both are configured with the same ``models`` mapping: a Hub model id (``"org/name"``) to the list of its
provider mappings, each a dict like ``{"provider": "together", "providerId": "org/name-turbo",
"status": "live", "task": "conversational"}`` (``status`` defaults to ``"live"``, ``task`` to
``"conversational"``, ``providerId`` to the Hub id). Share it: ``FakeRouter(models=hub.models)``.

:class:`FakeHub` serves ``GET /api/models/{id}`` (and ``/api/models/{id}/revision/{rev}``). With
``expand[]=inferenceProviderMapping`` (or ``expand=...``, as huggingface_hub sends it) the answer is
``{"_id", "id", "inferenceProviderMapping"}`` where the mapping is, by default, a dict keyed by provider
(``{"together": {"status", "providerId", "task", "isModelAuthor"}}``): that is what the Hub's model-info
endpoint returns today (hub-docs "Hub API" page; huggingface_hub 2.x notes "API returns a dict on
model_info and a list on list_models" and accepts both). ``mapping_shape="list"`` serves the list form
(``[{"provider", "providerId", "status", "task"}]``) that ``/api/models?...`` listings use. An unknown
model is a 404 ``{"error": "Repository not found"}`` with ``X-Error-Code: RepoNotFound``, like the Hub.
Faults apply to its GET requests.

:class:`FakeRouter` serves the router (``https://router.huggingface.co``):

* ``POST /v1/chat/completions`` with ``model`` ``"org/name"`` (first live ``conversational`` provider;
  also with ``:fastest`` / ``:cheapest`` / ``:preferred``) or ``"org/name:provider"``;
* ``POST /{provider}/v1/chat/completions`` and ``/{provider}/v1/completions`` with ``model`` the
  ``providerId`` (the Hub id is accepted too);
* ``POST /hf-inference/models/{org}/{name}``: TGI's compat protocol (``{inputs, parameters, stream}`` in,
  a JSON array or SSE out, prompt prepended for ``text-generation`` models when ``return_full_text`` is
  unset), and ``/hf-inference/models/{org}/{name}/v1/chat/completions``;
* ``GET /v1/models``: the models with a live conversational provider.

Every POST needs ``Authorization: Bearer hf_...`` (401 JSON error otherwise). The providers behind it are
vLLM-like OpenAI engines (see ``openai_compat.py``); the chosen provider is in
``requests[i].resolved["provider"]``. Error bodies of the router itself are approximations: the real
ones are not documented.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from ._common import Exchange, FakeServer
from .openai_compat import OpenAIEngine, StreamUsage, openai_error
from .tgi import TGILimits, serve_generation
from .tls import TLSConfig

ProviderMappings = Mapping[str, Iterable[Mapping[str, Any]]]
_ROUTING_POLICIES = ("", "fastest", "cheapest", "preferred")


def normalize_mappings(models: ProviderMappings | None) -> dict[str, list[dict[str, Any]]]:
    """Copy ``models`` with each mapping's defaults filled in."""
    result: dict[str, list[dict[str, Any]]] = {}
    for model_id, entries in (models or {}).items():
        result[model_id] = [
            {"providerId": model_id, "status": "live", "task": "conversational", **dict(entry)} for entry in entries
        ]
    return result


def _object_id(model_id: str) -> str:
    return hashlib.sha1(model_id.encode()).hexdigest()[:24]  # an id, not security


class FakeHub(FakeServer):
    """The Hub's model-info API, enough for provider resolution (see the module docstring).

    ``models`` and ``pipeline_tags`` are plain dicts on the instance, to be changed by tests at will;
    ``token``, when set, must come as ``Authorization: Bearer <token>`` (401 otherwise).
    """

    fault_methods = frozenset({"GET"})

    def __init__(
        self,
        models: ProviderMappings | None = None,
        *,
        mapping_shape: Literal["dict", "list"] = "dict",
        pipeline_tags: Mapping[str, str | None] | None = None,
        default_pipeline_tag: str | None = "text-generation",
        token: str | None = None,
        tls: TLSConfig | None = None,
    ) -> None:
        super().__init__(tls=tls)
        self.models = normalize_mappings(models)
        self.mapping_shape = mapping_shape
        self.pipeline_tags: dict[str, str | None] = dict(pipeline_tags or {})
        self.default_pipeline_tag = default_pipeline_tag
        self.token = token
        self.route("GET", r"/api/models/(?P<repo_id>[^/]+(?:/[^/]+)?)(?:/revision/(?P<revision>.+))?", self._model)

    def error_body(self, message: str, error_type: str, status: int) -> Any:
        return {"error": message}

    def pipeline_tag(self, model_id: str) -> str | None:
        return self.pipeline_tags.get(model_id, self.default_pipeline_tag)

    def mapping_document(self, model_id: str) -> dict[str, Any] | list[dict[str, Any]]:
        """``inferenceProviderMapping`` for a model, in the configured shape."""
        entries = self.models[model_id]
        if self.mapping_shape == "list":
            return [{"provider": e["provider"], **{k: v for k, v in e.items() if k != "provider"}} for e in entries]
        return {
            e["provider"]: {"isModelAuthor": False, **{k: v for k, v in e.items() if k != "provider"}} for e in entries
        }

    def _model(self, ex: Exchange, repo_id: str, revision: str | None = None) -> None:
        if self.token is not None and ex.bearer_token() != self.token:
            message = "Invalid credentials in Authorization header"
            ex.send_json(401, {"error": message}, headers={"X-Error-Message": message})
            return
        if repo_id not in self.models:
            ex.send_json(
                404,
                {"error": "Repository not found"},
                headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
            )
            return
        expand = ex.record.query.get("expand[]", []) + ex.record.query.get("expand", [])
        document: dict[str, Any] = {"_id": _object_id(repo_id), "id": repo_id}
        fields = {
            "inferenceProviderMapping": lambda: self.mapping_document(repo_id),
            "pipeline_tag": lambda: self.pipeline_tag(repo_id),
            "author": lambda: repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": lambda: hashlib.sha1(repo_id.encode()).hexdigest(),
            "private": lambda: False,
            "gated": lambda: False,
            "disabled": lambda: False,
            "downloads": lambda: 0,
            "likes": lambda: 0,
            "tags": lambda: [],
            "library_name": lambda: "transformers",
        }
        if expand:  # the Hub answers exactly the expanded fields, plus _id and id
            for name in expand:
                if name in fields:
                    document[name] = fields[name]()
        else:  # the default model-info document does not include the provider mapping
            document["modelId"] = repo_id
            for name, value in fields.items():
                if name != "inferenceProviderMapping":
                    document[name] = value()
            document["siblings"] = []
        ex.send_json(200, document)


class FakeRouter(FakeServer):
    """The Inference Providers router over the fake model (see the module docstring).

    ``models`` is a dict on the instance (share it with a :class:`FakeHub`); ``accepted_tokens``, when
    given, restricts the ``hf_`` tokens that pass.
    """

    def __init__(
        self,
        *,
        models: ProviderMappings | None = None,
        tokens: Iterable[str] | None = None,
        pipeline_tags: Mapping[str, str | None] | None = None,
        default_pipeline_tag: str | None = "text-generation",
        accepted_tokens: Iterable[str] | None = None,
        tgi_limits: TGILimits | None = None,
        keep_stop_text: bool = False,
        stream_usage: StreamUsage = "request",
        max_model_len: int = 4096,
        sse_space: bool = True,
        keepalive: bool = False,
        keepalive_comment: str = "",
        token_delay: float = 0.0,
        done_marker: bool = True,
        tls: TLSConfig | None = None,
    ) -> None:
        super().__init__(
            tokens,
            sse_space=sse_space,
            keepalive=keepalive,
            keepalive_comment=keepalive_comment,
            token_delay=token_delay,
            done_marker=done_marker,
            tls=tls,
        )
        # `models` may be a FakeHub's own dict: keep that very object so both fakes see the same changes.
        self.models = models if isinstance(models, dict) and _is_normalized(models) else normalize_mappings(models)
        self.pipeline_tags: dict[str, str | None] = dict(pipeline_tags or {})
        self.default_pipeline_tag = default_pipeline_tag
        self.accepted_tokens = set(accepted_tokens) if accepted_tokens is not None else None
        self.tgi_limits = tgi_limits or TGILimits()
        self.engine = OpenAIEngine(
            self,
            model_id="",
            check_model=False,
            keep_stop_text=keep_stop_text,
            stream_usage=stream_usage,
            max_model_len=max_model_len,
            done_marker=done_marker,
        )
        self.route("GET", r"/v1/models", self._models)
        self.route("POST", r"/v1/chat/completions", self._routed_chat)
        self.route("POST", r"/hf-inference/models/(?P<model>[^/]+(?:/[^/]+)?)/v1/chat/completions", self._hf_chat)
        self.route("POST", r"/hf-inference/models/(?P<model>[^/]+(?:/[^/]+)?)", self._hf_text_generation)
        self.route("POST", r"/(?P<provider>[^/]+)/v1/chat/completions", self._provider_chat)
        self.route("POST", r"/(?P<provider>[^/]+)/v1/completions", self._provider_completions)

    def error_body(self, message: str, error_type: str, status: int) -> Any:
        return {"error": message}

    # Helpers ------------------------------------------------------------------------------------
    def _authorized(self, ex: Exchange) -> bool:
        token = ex.bearer_token()
        if token and token.startswith("hf_") and (self.accepted_tokens is None or token in self.accepted_tokens):
            return True
        ex.send_json(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def _not_supported(self, ex: Exchange, model: Any) -> None:
        message = f"The requested model '{model}' is not supported by any provider you have enabled."
        ex.send_json(
            400,
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_supported",
                }
            },
        )

    def _mapping(self, provider: str, model: Any) -> dict[str, Any] | None:
        """The mapping of ``provider`` whose providerId (or Hub id) is ``model``."""
        for hf_id, entries in self.models.items():
            for entry in entries:
                if entry["provider"] == provider and model in (entry["providerId"], hf_id):
                    return {**entry, "hf_model_id": hf_id}
        return None

    def _resolved(self, ex: Exchange, entry: dict[str, Any]) -> None:
        ex.record.resolved.update(provider=entry["provider"], provider_id=entry["providerId"])

    # Routes -------------------------------------------------------------------------------------
    def _models(self, ex: Exchange) -> None:
        data = []
        for hf_id, entries in self.models.items():
            providers = [
                {"provider": e["provider"], "status": e["status"]}
                for e in entries
                if e["task"] == "conversational" and e["status"] == "live"
            ]
            if providers:
                data.append(
                    {
                        "id": hf_id,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": hf_id.split("/")[0],
                        "providers": providers,
                    }
                )
        ex.send_json(200, {"object": "list", "data": data})

    def _routed_chat(self, ex: Exchange) -> None:
        if not self._authorized(ex):
            return
        body = ex.json if isinstance(ex.json, dict) else {}
        model = body.get("model")
        if not isinstance(model, str):
            self._not_supported(ex, model)
            return
        hf_id, _, suffix = model.partition(":")
        entries = self.models.get(hf_id, [])
        if suffix in _ROUTING_POLICIES:
            chosen = [e for e in entries if e["status"] == "live" and e["task"] == "conversational"]
        else:
            chosen = [e for e in entries if e["provider"] == suffix and e["status"] != "error"]
        if not chosen:
            self._not_supported(ex, model)
            return
        self._resolved(ex, chosen[0])
        self.engine.chat(ex, served_model=chosen[0]["providerId"])

    def _provider_chat(self, ex: Exchange, provider: str) -> None:
        self._provider_route(ex, provider, chat=True)

    def _provider_completions(self, ex: Exchange, provider: str) -> None:
        self._provider_route(ex, provider, chat=False)

    def _provider_route(self, ex: Exchange, provider: str, *, chat: bool) -> None:
        if not self._authorized(ex):
            return
        model = ex.json.get("model") if isinstance(ex.json, dict) else None
        entry = self._mapping(provider, model)
        if entry is None:
            ex.send_json(404, openai_error(f"The model `{model}` does not exist.", "NotFoundError", 404, "model"))
            return
        self._resolved(ex, entry)
        (self.engine.chat if chat else self.engine.completions)(ex, served_model=entry["providerId"])

    def _hf_entry(self, ex: Exchange, model: str) -> dict[str, Any] | None:
        entry = self._mapping("hf-inference", model)
        if entry is None:
            ex.send_json(404, {"error": f"Model {model} does not exist"})
        else:
            self._resolved(ex, entry)
        return entry

    def _hf_text_generation(self, ex: Exchange, model: str) -> None:
        if self._authorized(ex) and (entry := self._hf_entry(ex, model)) is not None:
            tag = self.pipeline_tags.get(entry["hf_model_id"], self.default_pipeline_tag)
            serve_generation(self, ex, route="compat", limits=self.tgi_limits, pipeline_tag=tag, done_marker=False)

    def _hf_chat(self, ex: Exchange, model: str) -> None:
        if self._authorized(ex) and (entry := self._hf_entry(ex, model)) is not None:
            self.engine.chat(ex, served_model=entry["providerId"])


def _is_normalized(models: Mapping[str, Any]) -> bool:
    keys = {"provider", "providerId", "status", "task"}
    return all(
        isinstance(entries, list) and all(isinstance(e, dict) and keys <= e.keys() for e in entries)
        for entries in models.values()
    )
