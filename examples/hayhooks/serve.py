"""
`hayhooks run` for the pipelines beside this file, with OpenAI-shaped error bodies on the OpenAI-compatible routes.

    python examples/hayhooks/serve.py [--host 127.0.0.1] [--port 1416] [--pipelines-dir DIR] [--with-chainlit]

Hayhooks' FastAPI app answers every HTTPException as `{"detail": ...}`. The `hf_generate` wrapper raises its errors
with an OpenAI error object as the detail (`{"error": {"message", "type", "param", "code"}}`); this launcher adds one
exception handler that sends such a detail as the body itself, which is what OpenAI clients read (`openai` sets
`error.param`, `error.code` from it). Everything else is Hayhooks' own `create_app()` and `run_app()`: the same
routes, pipelines and Chainlit UI (`--with-chainlit`, at `/chat`) as `hayhooks run`, and Ctrl-C (or SIGTERM) stops it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

PIPELINES = Path(__file__).resolve().with_name("pipelines")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve.py", description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1416)
    parser.add_argument("--pipelines-dir", type=Path, default=PIPELINES)
    parser.add_argument("--with-chainlit", action="store_true", help="serve Hayhooks' Chainlit chat UI at /chat")
    args = parser.parse_args(argv)

    # Hayhooks reads its settings from HAYHOOKS_* when it is imported (as `hayhooks run` sets them).
    os.environ["HAYHOOKS_HOST"] = args.host
    os.environ["HAYHOOKS_PORT"] = str(args.port)
    os.environ["HAYHOOKS_PIPELINES_DIR"] = str(args.pipelines_dir.resolve())
    if args.with_chainlit:
        os.environ["HAYHOOKS_CHAINLIT_ENABLED"] = "true"

    from fastapi import HTTPException, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import JSONResponse, Response
    from hayhooks import create_app, run_app

    app = create_app()

    async def openai_errors(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = exc.detail
        if isinstance(detail, dict) and set(detail) == {"error"} and isinstance(detail["error"], dict):
            return JSONResponse(detail, status_code=exc.status_code, headers=exc.headers)
        return await http_exception_handler(request, exc)

    app.add_exception_handler(HTTPException, openai_errors)
    run_app(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
