"""
Import time of one peer, in a fresh process: `python benchmarks/import_time.py PEER [--cpu N]`.

Prints one JSON line: `base_ms` (the framework the peer plugs into, e.g. `import haystack`; 0 when
there is none) and `pkg_ms` (the peer's own import on top of it), how many modules each added, and
the peak RSS after each (`base_rss_mb`, `pkg_rss_mb`): the memory a client owes to its imports.
The orchestrator runs it several times per peer, interleaved, and keeps the median.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import time

# peer: (framework imported first, the peer's import on top of it)
IMPORTS = {
    "urllib3": (None, "urllib3"),
    "aiohttp": (None, "aiohttp"),
    "httpx": (None, "httpx"),
    "httpx2": (None, "httpx2"),
    "ours": ("haystack", "haystack_integrations.generators.hugging_face_api"),
    "hfhub": (None, "huggingface_hub:InferenceClient"),
    "haystack2": ("haystack", "haystack.components.generators:HuggingFaceAPIGenerator"),
    "langchain": (None, "langchain_huggingface:HuggingFaceEndpoint"),
}


def _import(spec: str) -> None:
    module, _, attribute = spec.partition(":")
    imported = importlib.import_module(module)
    if attribute:  # lazy packages import the submodule on attribute access
        getattr(imported, attribute)


def _timed(spec: str | None) -> tuple[float, int]:
    if spec is None:
        return 0.0, 0
    before = len(sys.modules)
    start = time.perf_counter()
    _import(spec)
    return (time.perf_counter() - start) * 1000, len(sys.modules) - before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("peer", choices=sorted(IMPORTS))
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    base, pkg = IMPORTS[args.peer]
    base_ms, base_modules = _timed(base)
    base_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    pkg_ms, pkg_modules = _timed(pkg)
    pkg_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "base_ms": base_ms,
                "pkg_ms": pkg_ms,
                "base_modules": base_modules,
                "pkg_modules": pkg_modules,
                "base_rss_mb": base_rss_mb,
                "pkg_rss_mb": pkg_rss_mb,
            }
        )
    )


if __name__ == "__main__":
    main()
