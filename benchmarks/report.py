# The report is typography for people: the multiplication sign and the en dash are meant as such.
# ruff: noqa: RUF001
"""
Turns benchmarks/results.json into BENCHMARKS.md and benchmarks/chart.png.

Called by bench.py at the end of a run; can also be run alone to redo the report from saved results:
    .cache/bench-venvs/tools/bin/python benchmarks/report.py
The hand-written analysis (profiles, causes, proposals) lives in benchmarks/analysis.md and is appended.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMMAND = "bash benchmarks/run.sh"
STREAM_TOKENS = 1000

# Targets from the performance issue, as ratios to the raw floor measured in the same blocks.
TARGET_CPU = 1.3
TARGET_RPS = 0.9
TARGET_IMPORT_MS = 100.0
TARGET_LOCAL = 0.95


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def per_block(results: dict[str, Any], op: str, key: str) -> list[float | None]:
    """One figure per block: µs of CPU per call, µs of CPU per token, or requests per second."""
    values: list[float | None] = []
    for sample in results["blocks"][op].get(key, []):
        if sample is None:
            values.append(None)
        elif op == "call":
            values.append(sample["cpu"] / sample["n"] * 1e6)
        elif op == "stream":
            values.append(sample["cpu"] / (sample["n"] * STREAM_TOKENS) * 1e6)
        else:
            values.append(sample["n"] / sample["wall"])
    return values


def ratios(results: dict[str, Any], op: str, variant: dict[str, Any]) -> list[float]:
    """The variant over its reference, block by block (only blocks where both ran)."""
    mine = per_block(results, op, variant["key"])
    if op == "rps":
        refs = [per_block(results, op, key) for key in variant["rps_refs"]]
        reference = [max((r[i] for r in refs if i < len(r) and r[i]), default=None) for i in range(len(mine))]
    else:
        reference = per_block(results, op, variant["cpu_ref"])
    return [m / r for m, r in zip(mine, reference, strict=False) if m and r]


def summary(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """variant key -> figure -> {value, ratio, lo, hi}."""
    samples = results.get("imports", {}).get("samples", {})
    framework_rss = {
        peer: _median([s["base_rss_mb"] for s in found])
        for peer, found in samples.items()
        if found and found[0].get("base_ms") and "base_rss_mb" in found[0]
    }
    table: dict[str, dict[str, dict[str, float]]] = {}
    for variant in results["variants"]:
        row: dict[str, dict[str, float]] = {}
        for op in ("call", "stream", "rps"):
            values = [v for v in per_block(results, op, variant["key"]) if v]
            rs = ratios(results, op, variant)
            if values and rs:
                row[op] = {"value": _median(values), "ratio": _median(rs), "lo": min(rs), "hi": max(rs), "n": len(rs)}
        rss = results.get("rss", {})
        if rss.get(variant["key"]) and rss.get(variant["cpu_ref"]):
            row["rss"] = {"value": rss[variant["key"]], "ratio": rss[variant["key"]] / rss[variant["cpu_ref"]]}
            peer = variant["peer"].removesuffix("_async")
            if peer in framework_rss:  # what the client adds to `import haystack` in the same venv
                row["rss"]["beyond_framework"] = rss[variant["key"]] - framework_rss[peer]
        table[variant["key"]] = row
    return table


def import_summary(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    out = {}
    for peer, samples in results.get("imports", {}).get("samples", {}).items():
        if samples:
            base = _median([s["base_ms"] for s in samples])
            pkg = _median([s["pkg_ms"] for s in samples])
            out[peer] = {
                "base_ms": base,
                "pkg_ms": pkg,
                "pkg_lo": min(s["pkg_ms"] for s in samples),
                "pkg_hi": max(s["pkg_ms"] for s in samples),
                "total_ms": _median([s["base_ms"] + s["pkg_ms"] for s in samples]),
                "pkg_modules": _median([s["pkg_modules"] for s in samples]),
                "n": len(samples),
            }
    return out


def _cell(entry: dict[str, float] | None, unit: str, digits: int = 0) -> str:
    if not entry:
        return "—"
    spread = f", {entry['lo']:.2f}–{entry['hi']:.2f}" if "lo" in entry else ""
    return f"{entry['value']:,.{digits}f} {unit} (**{entry['ratio']:.2f}×**{spread})"


def _rss_cell(entry: dict[str, float]) -> str:
    cell = f"{entry['value']:.0f} MB ({entry['ratio']:.2f}×)"
    if "beyond_framework" in entry:
        cell += f"; {entry['beyond_framework']:+.0f} MB over `import haystack`"
    return cell


# --- chart ------------------------------------------------------------------------------------------

CHART_PEERS = [
    ("ours-tgi", "ours run (TGI)", "#1f77b4"),
    ("ours-tgi+patch", "  + proposed patch", "#1f77b4"),
    ("ours-tgi-async", "ours run_async (TGI)", "#6baed6"),
    ("ours-tgi-async+patch", "  + proposed patch", "#6baed6"),
    ("ours-completions", "ours run (completions)", "#08519c"),
    ("ours-completions+patch", "  + proposed patch", "#08519c"),
    ("ours-completions-async", "ours run_async (completions)", "#9ecae1"),
    ("ours-completions-async+patch", "  + proposed patch", "#9ecae1"),
    ("hfhub", "huggingface_hub 2.4", "#ff7f0e"),
    ("hfhub-async", "huggingface_hub 2.4 async", "#fdae6b"),
    ("haystack2", "Haystack 2.31", "#2ca02c"),
    ("langchain", "LangChain", "#d62728"),
    ("langchain-async", "LangChain async", "#fc9272"),
]


def write_chart(results: dict[str, Any], table: dict[str, Any], imports: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [
        ("call", "CPU per call\n(16 tokens)", TARGET_CPU),
        ("stream", "CPU per streamed token\n(1,000-token streams)", TARGET_CPU),
        ("rps", "requests/s, 64 in flight\n(vs best raw)", TARGET_RPS),
        ("rss", "peak RSS after 1,000 calls\n(ours: mostly `import haystack`)", None),
    ]
    peers = [p for p in CHART_PEERS if p[0] in table]
    fig, (ax, ax_imp) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [3.2, 1]})
    width = 0.8 / max(len(peers), 1)
    for index, (key, label, color) in enumerate(peers):
        xs, ys, lows, highs = [], [], [], []
        for group, (figure, _, _) in enumerate(figures):
            entry = table[key].get(figure)
            if not entry:
                continue
            xs.append(group - 0.4 + width * (index + 0.5))
            ys.append(entry["ratio"])
            lows.append(entry["ratio"] - entry.get("lo", entry["ratio"]))
            highs.append(entry.get("hi", entry["ratio"]) - entry["ratio"])
        patched = key.endswith("+patch")  # hatched, next to the bar it improves
        ax.bar(
            xs,
            ys,
            width,
            label=label,
            color=color,
            edgecolor="white" if patched else color,
            hatch="///" if patched else None,
            linewidth=0,
            yerr=[lows, highs],
            capsize=2,
            error_kw={"elinewidth": 0.8},
        )
    for group, (_, _, target) in enumerate(figures):
        if target:
            ax.hlines(target, group - 0.45, group + 0.45, colors="black", linestyles="dashed", linewidth=1)
            ax.annotate(f"target {target}×", (group - 0.45, target), fontsize=7, ha="left", va="bottom")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_yticks([0.0625, 0.125, 0.25, 0.5, 1, 2, 4, 8])
    ax.get_yaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g×"))
    ax.get_yaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(range(len(figures)), [f[1] for f in figures])
    ax.set_ylabel("× the raw httpx floor (log scale)")
    ax.set_title(
        "Ratio to raw httpx in the same blocks: median bar, min–max whiskers\n"
        "CPU and RSS: lower is better; requests/s: higher is better",
        fontsize=10,
    )
    ax.legend(fontsize=8, ncols=5, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    ax.set_xlim(-0.5, len(figures) - 0.5)

    labels = {"raw": "raw httpx", "ours": "ours", "hfhub": "hf_hub 2.4", "haystack2": "Haystack 2.31",
              "langchain": "LangChain"}  # fmt: skip
    names = [p for p in labels if p in imports]
    base = [imports[p]["base_ms"] for p in names]
    pkg = [imports[p]["pkg_ms"] for p in names]
    ax_imp.bar(range(len(names)), base, color="#bbbbbb", label="`import haystack` first")
    ax_imp.bar(range(len(names)), pkg, bottom=base, color="#1f77b4", label="the client's own import")
    for i, (b, p) in enumerate(zip(base, pkg, strict=True)):
        ax_imp.annotate(f"+{p:.0f}", (i, b + p), ha="center", va="bottom", fontsize=8)
    ax_imp.set_xticks(range(len(names)), [labels[n] for n in names], rotation=30, ha="right")
    ax_imp.set_ylabel("ms, fresh process (median)")
    ax_imp.set_title("Import time, fresh process", fontsize=10)
    ax_imp.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- markdown ---------------------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def targets(table: dict[str, Any], imports: dict[str, Any], local: dict[str, Any]) -> list[tuple[str, ...]]:
    """(target, goal, this run, with the proposed patch) rows."""

    def cpu(entry: dict[str, float] | None, goal: float) -> str:
        return "—" if not entry else f"{entry['ratio']:.2f}× {_verdict(entry['ratio'] <= goal)}"

    def rps(entry: dict[str, float] | None) -> str:
        return "—" if not entry else f"{entry['ratio']:.2f}× {_verdict(entry['ratio'] >= TARGET_RPS)}"

    rows: list[tuple[str, ...]] = []
    for key in ("ours-tgi", "ours-tgi-async", "ours-completions", "ours-completions-async"):
        if key not in table:
            continue
        patched = table.get(key + "+patch", {})
        for op, what in (("call", "CPU per call"), ("stream", "CPU per streamed token")):
            rows.append(
                (f"{what}, {key}", f"≤ {TARGET_CPU}×", cpu(table[key].get(op), TARGET_CPU),
                 cpu(patched.get(op), TARGET_CPU))
            )  # fmt: skip
        rows.append(
            (f"req/s at 64 in flight, {key}", f"≥ {TARGET_RPS}× best raw", rps(table[key].get("rps")),
             rps(patched.get("rps")))
        )  # fmt: skip
    if "ours" in imports:
        added = imports["ours"]["pkg_ms"]
        rows.append(("import adds to `import haystack`", f"≤ {TARGET_IMPORT_MS:.0f} ms",
                     f"{added:.0f} ms {_verdict(added <= TARGET_IMPORT_MS)}", "(unchanged)"))  # fmt: skip
    for mode in ("call", "stream"):
        if mode in local:
            ratio = local[mode]["ours_tps"] / local[mode]["direct_tps"]
            rows.append((f"local model tokens/s ({'streaming' if mode == 'stream' else 'one piece'})",
                         f"≥ {TARGET_LOCAL}× direct", f"{ratio:.2f}× {_verdict(ratio >= TARGET_LOCAL)}",
                         "—"))  # fmt: skip
    return rows


def write_markdown(results: dict[str, Any], table: dict[str, Any], imports: dict[str, Any], path: Path) -> None:
    settings = results["settings"]
    labels = {v["key"]: v for v in results["variants"]}
    local = results.get("local_model", {})
    lines = [
        "# Benchmarks",
        "",
        'Client-side cost of `HuggingFaceAPIGenerator` ("ours") against the least a Python client can do with '
        "httpx (the *raw floor*) and against the other Hugging Face text-generation clients, all talking to the "
        "same fast fake server on loopback.",
        "",
        f"Regenerate this file and `benchmarks/chart.png` with **`{COMMAND}`** from the repository root "
        "(it creates the venvs it needs under `.cache/bench-venvs/` on first use; later runs reuse them). "
        f"This run: {results['started']}, {results['duration_s'] / 60:.1f} minutes.",
        "",
        *(
            [
                f"**Measured with `--ours-src {settings['ours_src']}`** (a modified copy of src/), "
                "not the installed package.",
                "",
            ]
            if settings.get("ours_src")
            else []
        ),
        "![chart](benchmarks/chart.png)",
        "",
        "## Results",
        "",
        f"Each cell: median absolute value, then **the median ratio to the raw floor** measured in the same block, "
        f"then the spread of that ratio (min–max over {settings['blocks']} blocks). CPU is `time.process_time()` of "
        "the client process (all threads). The reference for sync clients is raw `httpx.Client`, for async "
        "clients raw `httpx.AsyncClient`, on the same protocol (huggingface_hub, Haystack 2.31 and LangChain speak "
        "TGI's protocol); for requests/s it is the better of the two raw clients.",
        "",
        "| client | CPU per call (16 tokens) | CPU per streamed token | requests/s, 64 in flight | peak RSS after "
        f"{settings['rss_calls']:,} calls |",
        "|---|---|---|---|---|",
    ]
    for key, row in table.items():
        lines.append(
            f"| {labels[key]['label']} | {_cell(row.get('call'), 'µs')} | {_cell(row.get('stream'), 'µs', 1)} | "
            f"{_cell(row.get('rps'), '/s')} | " + (_rss_cell(row["rss"]) if "rss" in row else "—") + " |"
        )
    errors = results.get("errors") or {}
    if errors:
        lines += ["", "Clients that failed during the run (no numbers are shown for what they did not finish):", ""]
        lines += [f"- `{key}`: {error}" for key, error in errors.items()]

    proposal = results.get("proposal")
    rows = targets(table, imports, local)
    lines += ["", "### Targets", ""]
    if proposal:
        lines += [
            f"The last column: the same figures for ours with the proposed change to src/ ({proposal}), measured "
            "in the same blocks; see the analysis below.",
            "",
            "| target | goal | this run (src/ as is) | with the proposed patch |",
            "|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        lines += ["| target | goal | this run |", "|---|---|---|"]
        lines += ["| " + " | ".join(row[:3]) + " |" for row in rows]
    lines += [
        "",
        "### Import time",
        "",
        f"Fresh process per sample, {settings['import_reps']} samples per client, round-robin; median (min–max of "
        "the client's own part).",
        "",
        "| client | framework import | the client's own import | total | modules it adds |",
        "|---|---|---|---|---|",
    ]
    framework = {"ours": "`import haystack` (3.4)", "haystack2": "`import haystack` (2.31)"}
    what = {
        "raw": "`import httpx`",
        "ours": "`import haystack_integrations.generators.hugging_face_api`",
        "hfhub": "`from huggingface_hub import InferenceClient`",
        "haystack2": "`from haystack.components.generators import HuggingFaceAPIGenerator`",
        "langchain": "`from langchain_huggingface import HuggingFaceEndpoint`",
    }
    for peer, entry in imports.items():
        lines.append(
            f"| {what[peer]} | {framework.get(peer, '—')} {entry['base_ms']:.0f} ms | {entry['pkg_ms']:.0f} ms "
            f"({entry['pkg_lo']:.0f}–{entry['pkg_hi']:.0f}) | {entry['total_ms']:.0f} ms | {entry['pkg_modules']:.0f} |"
        )
    breakdown = results.get("imports", {}).get("breakdown", [])
    if breakdown:
        top = sorted(breakdown, key=lambda e: -e["self_ms"])[:8]
        lines += [
            "",
            f"What our package's import loads beyond `import haystack` (`python -X importtime`, one run): "
            f"{len(breakdown)} modules; the largest by own time:",
            "",
            "| module | cumulative | self |",
            "|---|---|---|",
        ]
        lines += [f"| `{e['module']}` | {e['cum_ms']:.1f} ms | {e['self_ms']:.1f} ms |" for e in top]

    lines += ["", "### Through the real local model", ""]
    if "skipped" in local:
        lines.append(f"Skipped: {local['skipped']}")
    else:
        lines += [
            f"`transformers serve` on {local.get('model')} (`local_model.LocalModelServer`, CPU, bfloat16), "
            f"{local.get('tokens')} new tokens per request, greedy, one prompt; ours (protocol `auto`, which "
            "resolves to `/v1/completions`) and direct httpx requests with the same body alternate request by "
            f"request, {settings['local_reps']} requests each. Server start-up: {local.get('startup_s', 0):.0f} s.",
            "",
            "| mode | direct tokens/s | through the generator | ratio (median) | per-pair ratios |",
            "|---|---|---|---|---|",
        ]
        for mode in ("call", "stream"):
            if mode in local:
                entry = local[mode]
                pairs = ", ".join(f"{r:.2f}" for r in entry["ratios"])
                lines.append(
                    f"| {'streaming' if mode == 'stream' else 'one piece'} | {entry['direct_tps']:.1f} | "
                    f"{entry['ours_tps']:.1f} | {entry['ours_tps'] / entry['direct_tps']:.2f}× | {pairs} |"
                )

    m = results["machine"]
    pin = results["pinning"]
    lines += [
        "",
        "## Machine and versions",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM; {m['os']}",
        f"- Pinning: clients on CPU {pin['client_cpu']}, fake server on CPU {pin['server_cpu']} "
        "(`os.sched_setaffinity`); other work on the machine was not stopped, hence the interleaving.",
    ]
    for venv, found in results["versions"].items():
        lines.append(f"- venv `{venv}`: " + ", ".join(f"{k} {v}" for k, v in found.items()))

    lines += [
        "",
        "## Method",
        "",
        "- **Fake server** (`benchmarks/fake_server.py`): one asyncio protocol (uvloop) in its own process on its "
        "own core; answers cached by request bytes, so it spends microseconds per request. Routes and shapes follow "
        "TGI 3.3 (`/info`, `/generate` with `details` and its `x-*` headers, `/generate_stream` with one SSE event "
        "per token, each in its own HTTP chunk, the compat route `/`) and vLLM (`/v1/models`, `/v1/completions` "
        "with `usage`, the usage chunk and `data: [DONE]`).",
        "- **Clients** (`benchmarks/client.py`): each in its own process, set up and warmed up once, then driven "
        f"over a pipe. Per block: {settings['calls']} one-piece calls of 16 tokens, {settings['streams']} streams "
        f"of 1,000 tokens, and a {settings['rps_seconds']:g}-second window of requests with 64 in flight (64 threads "
        "for sync clients, 64 tasks for async ones; requests/s = requests made / wall time). The in-flight runs use a "
        "second instance of the client, so the sequential windows never inherit its 64 idle connections. "
        "`gc.collect()` before each window so that no window inherits a full collection of another's garbage. "
        "Every client's reply and streamed text are checked against the server's text "
        "before measuring.",
        "- **Raw floor**: a keep-alive `httpx.Client` (`max_keepalive_connections=64`) posting the same body as "
        "ours and calling `response.json()`; streams: `iter_lines()` plus `json.loads` per event. The async floor "
        "is the same with `httpx.AsyncClient`.",
        "- **huggingface_hub 2.4**: `InferenceClient(model=url).text_generation(..., details=True, "
        "return_full_text=False)`. Given a URL it POSTs to the URL itself, i.e. TGI's compat route `/` with "
        "`stream` in the body, which TGI answers like `/generate` (as a one-element list) or `/generate_stream`; "
        "`return_full_text=False` is needed there, otherwise TGI prepends the prompt.",
        "- **Haystack 2.31** (`haystack-ai==2.31.0` + huggingface_hub 2.4, own venv): it always passes "
        "`generation_kwargs['stop_sequences']` (an empty list here), which huggingface_hub 2.x rejects with a "
        "TypeError; the benchmark drops that key from the instance's `generation_kwargs` after construction "
        "(a runtime patch, site-packages untouched). `return_full_text=False` for the same reason as above. "
        "It has no `run_async`, so only threads.",
        "- **LangChain** (`langchain-huggingface` on huggingface_hub < 2, own venv): `HuggingFaceEndpoint("
        "endpoint_url=url)`, `invoke`/`stream`/`ainvoke`/`astream` with its defaults; it requests no `details`, "
        "so its one-piece answers are smaller than everyone else's.",
        "- **Import time**: `benchmarks/import_time.py` in a fresh process, timing the framework import, then the "
        "client's own import. **Peak RSS**: a fresh process per client making "
        f"{settings['rss_calls']:,} one-piece calls, then `resource.getrusage(RUSAGE_SELF).ru_maxrss`.",
    ]
    analysis = HERE / "analysis.md"
    if analysis.exists():
        lines += ["", analysis.read_text().rstrip()]
    path.write_text("\n".join(lines) + "\n")


def write_report(results: dict[str, Any], markdown: Path, chart: Path) -> None:
    table = summary(results)
    imports = import_summary(results)
    write_chart(results, table, imports, chart)
    write_markdown(results, table, imports, markdown)
    print(f"wrote {markdown} and {chart}")


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results.json"
    write_report(json.loads(source.read_text()), ROOT / "BENCHMARKS.md", HERE / "chart.png")
