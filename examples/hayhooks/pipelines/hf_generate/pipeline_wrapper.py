"""
Hayhooks wrapper that serves `hf_generate.yml` (beside this file) at `POST /hf_generate/run`.

The YAML is a plain Haystack pipeline. The wrapper adds two things a YAML-only deployment cannot do:
the server URL comes from the environment (`HF_API_GENERATOR_URL`), and `generation_kwargs` is optional
in the request body.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from hayhooks import BasePipelineWrapper
from haystack import Pipeline

URL_ENV = "HF_API_GENERATOR_URL"
PIPELINE_FILE = Path(__file__).with_name("hf_generate.yml")
GENERATOR = "llm"


class PipelineWrapper(BasePipelineWrapper):
    """Prompt in, text out, through HuggingFaceAPIGenerator."""

    def setup(self) -> None:
        """Load the YAML pipeline, pointing its generator at `$HF_API_GENERATOR_URL` when that is set."""
        definition = yaml.safe_load(PIPELINE_FILE.read_text(encoding="utf-8"))
        url = os.environ.get(URL_ENV, "").strip()
        if url:
            definition["components"][GENERATOR]["init_parameters"]["api_params"]["url"] = url
        # Hayhooks' `inputs` / `outputs` sections are for `hayhooks pipeline deploy-yaml`, not for Haystack.
        definition.pop("inputs", None)
        definition.pop("outputs", None)
        self.pipeline = Pipeline.from_dict(definition)

    async def run_api_async(self, prompt: str, generation_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """
        Generate a reply to a prompt.

        :param prompt: The prompt, sent as is (no chat template unless the server only offers chat).
        :param generation_kwargs: Overrides for this request, e.g. {"max_new_tokens": 32, "stop": ["\\n"]}.
        :returns: `replies` (one string) and `meta` (model, finish_reason, usage, protocol, ...).
        """
        assert self.pipeline is not None  # set by setup(), which Hayhooks calls before serving
        inputs: dict[str, Any] = {"prompt": prompt}
        if generation_kwargs:
            inputs["generation_kwargs"] = generation_kwargs
        result = await self.pipeline.run_async({GENERATOR: inputs})
        output: dict[str, Any] = result[GENERATOR]
        return {"replies": output["replies"], "meta": output["meta"]}
