# The report is typography for people: the multiplication sign and the dashes are meant as such.
# ruff: noqa: RUF001
"""
Turns the fleet benchmark's results (`fleet_results.json`) into FLEET.md, and prints the targets.

Called by fleet.py at the end of a run; can also be run alone to redo the report from saved results:
    python benchmarks/fleet_report.py [benchmarks/fleet_results.json] [--markdown FLEET.md]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMMAND = "bash benchmarks/fleet.sh"


def _f(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value:,}{suffix}"


def _met(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def _scenario_keys(results: dict[str, Any]) -> list[str]:
    """Ours first, then the raw loop by concurrency, then the rest (the wiring check)."""
    scenarios = results["scenarios"]
    raw = sorted((k for k in scenarios if k.startswith("raw-")), key=lambda k: int(k.split("-")[1]))
    first = [k for k in ("ours-python", "ours-cli") if k in scenarios] + raw
    return first + [k for k in scenarios if k not in first]


def _label(results: dict[str, Any], key: str) -> str:
    label = results["scenarios"][key].get("label", key)
    return label + (" (best)" if key == f"raw-{results.get('best_concurrency')}" else "")


def write_report(results: dict[str, Any], markdown: Path) -> None:
    settings = results["settings"]
    lines = [
        "# Fleet benchmark",
        "",
        f"`{COMMAND}{' --quick' if settings.get('quick') else ''}`, {results['started']}, "
        f"{results.get('duration_s', 0):.0f} s; {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f'Python {results["machine"]["python"]}. What is measured and why: `benchmarks/README.md`, "Fleet benchmark".',
        "",
    ]
    if settings.get("quick"):
        lines += ["**A --quick run**: fewer prompts and a short sweep, to check the harness; not the targets' run.", ""]
    lines += ["## Targets (issue 21, point 5)", "", "| target | value | bound | |", "|---|---|---|---|"]
    for row in results.get("targets", []):
        value = row["value"]
        shown = _f(value, 3) if isinstance(value, float) else _f(value)
        note = f" ({row['note']})" if row.get("note") else ""
        lines.append(f"| {row['target']}{note} | {shown} | {row['bound'] or '–'} | {_met(row['met'])} |")

    fleet = results["fleet"]
    tokens = settings["tokens"]
    total = sum(r["capacity_tokens_per_s"] for r in fleet)
    lines += [
        "",
        "## The fleet",
        "",
        f"Four fake continuous-batching engines (`benchmarks/fleet_server.py`): a decode step of "
        f"{settings['step_seconds'] * 1000:g} ms / speed, at most {settings['batch_size']} sequences per step, "
        f"{settings['queue_limit']} admitted at most (running + waiting; `max_concurrent_requests` in `/info`), "
        f"{settings['refuse_status']} past it. The batch: {settings['prompts']:,} prompts whose replies end by "
        f"themselves after {tokens} tokens on average (± {settings['spread'] * 100:.0f} %, uniform, by the prompt's "
        f"hash), plus the end-of-sequence token: {results.get('work_tokens', 0):,} decode steps in all; "
        f"`{settings['kill']}` killed {settings['kill_at']:g} s after the first request, started again "
        f"{settings['down']:g} s later.",
        "",
        "| replica | speed | capacity (tokens/s) | prompts/s (replies of mean length) |",
        "|---|---|---|---|",
    ]
    for r in fleet:
        lines.append(f"| {r['name']} | {r['speed']:g} | {r['capacity_tokens_per_s']:,.0f} | {r['prompts_per_s']:.1f} |")
    lines += [
        f"| all | {sum(r['speed'] for r in fleet):g} | {total:,.0f} | {total / (tokens + 1):.1f} |",
        "",
        "Ideal time = the time in which the replicas' capacities (batch size × speed / step, tokens per second), "
        "summed over the replicas alive at each moment, produce the batch's decode steps: the killed replica counts "
        "for nothing from its crash until its restart printed READY. Times are the servers' (first request to last "
        "reply), so the CLI's start-up is not counted (its whole run is the client's wall time and CPU).",
        "",
        "## The batch",
        "",
        "| scenario | time (s) | ideal (s) | × ideal | prompts/s | refused by the servers | lost | duplicated "
        "| wrong reply | replicas used | client wall (s) | client CPU (s) | machine busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    served = []
    for key in _scenario_keys(results):
        s = results["scenarios"][key]
        if not s.get("available", True):
            lines.append(f"| {key}: not available | {s.get('reason', '')} |" + " |" * 11)
            continue
        if "wall_s" not in s:
            lines.append(f"| {_label(results, key)} | no answer (exit {s.get('returncode')}) |" + " |" * 11)
            continue
        check = s["check"]
        busy = s.get("machine_busy")
        lines.append(
            f"| {_label(results, key)} | {s['wall_s']:.2f} | {s['ideal_s']:.2f} | {s['ratio_to_ideal']:.3f} | "
            f"{s['prompts_per_s']:.1f} | {s['totals']['refused']:,} | {check['lost']} | {check['duplicated']} | "
            f"{check['wrong']} | {len(s['replicas_used'])}/{len(s['replicas'])} | {s['client_wall_s']:.1f} | "
            f"{_f(s.get('client_cpu_s'), 1)} | {_f(busy * 100 if busy is not None else None, 0, ' %')} |"
        )
        cells = []
        for server in s["servers"].values():
            util = server["slot_steps"] / (server["steps"] * settings["batch_size"]) if server["steps"] else 0
            cells.append(
                f"{server['completed']:,} / {server['refused']:,} / {server['cancelled'] + server['aborted']:,} / "
                f"{util * 100:.0f} %"
            )
        kill = s.get("kill")
        shown_kill = f"{kill['replica']} at {kill['at_s']:.1f} s for {kill['down_s']:.1f} s" if kill else "–"
        served.append(f"| {_label(results, key)} | " + " | ".join(cells) + f" | {shown_kill} |")
    names = [r["name"] for r in fleet]
    lines += [
        "",
        "Per replica: completed / refused / cancelled or lost in the crash / batch occupancy while busy.",
        "",
        "| scenario | " + " | ".join(names) + " | kill |",
        "|---|" + "---|" * (len(names) + 1),
        *served,
    ]

    sweep = results.get("sweep")
    if sweep:
        lines += [
            "",
            "## The raw loop's sweep",
            "",
            f"Steady throughput of the raw aiohttp loop (round-robin, retry after a jittered exponential backoff) at "
            f"each fixed concurrency, no kill: the tokens the servers generated in {settings['window']:g} s after a "
            f"{settings['warmup']:g} s warm-up, as prompts/s. Within 2 % of the best, and so run on the batch: "
            f"{', '.join(map(str, results.get('sweep_candidates', [])))}; the fastest batch: "
            f"**{results.get('best_concurrency')}** in flight.",
            "",
            "| in flight | prompts/s | of the fleet's capacity | replies/s in the window | refused by the servers "
            "| retries |",
            "|---|---|---|---|---|---|",
        ]
        for p in sweep:
            share = p.get("capacity_share")
            lines.append(
                f"| {p['concurrency']} | {_f(p.get('throughput'), 1)} | "
                f"{_f(share * 100 if share else None, 0, ' %')} | {_f(p.get('replies_per_s'), 1)} | "
                f"{p['server_refused']:,} | "
                f"{_f(p.get('attempts', 0) - p.get('ok', 0))} |"
            )

    single = results.get("single_call")
    if single:
        lines += [
            "",
            "## Single calls",
            "",
            f"Sequential calls of {single['tokens']} tokens against one replica that answers at once, CPU per call "
            f"(`benchmarks/client.py`'s peers), {single['rounds']} interleaved rounds of {single['calls']} calls; "
            f'"before" is the src/ of {str(single.get("before_rev", "?"))[:12]}.',
            "",
            "| src | ours (µs) | raw aiohttp (µs) | ours / raw | ours wall (µs) | raw wall (µs) |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("now", "before"):
            if isinstance(single.get(name), dict):
                r = single[name]
                lines.append(
                    f"| {name} | {r['ours_us']:.0f} | {r['raw_us']:.0f} | {_f(r['ratio'], 3)} | "
                    f"{r['ours_wall_us']:.0f} | {r['raw_wall_us']:.0f} |"
                )
        if "change" in single:
            lines += ["", f"Now over before, median of the rounds: **{single['change']:.3f}x**."]
        for name in ("before_error", "now_error"):
            if name in single:
                lines += ["", f"{name}: {single[name]}"]

    notes = []
    for key in _scenario_keys(results):
        s = results["scenarios"][key]
        for field in ("kill_error", "stderr_tail", "stdout_tail"):
            if s.get(field):
                notes.append(f"- {key}, {field}: `{s[field]}`")
        if s.get("client", {}).get("failed") and key.startswith("ours"):
            errors = s.get("check", {}).get("errors")
            notes.append(f"- {key}: {s['client']['failed']} prompts failed in the generator ({errors})")
    if results.get("cli_probe"):
        notes.append(f"- the CLI with 4 `--url`: {results['cli_probe']}")
    if notes:
        lines += ["", "## Notes", "", *notes]
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")


def print_targets(results: dict[str, Any]) -> None:
    print("targets:")
    for row in results.get("targets", []):
        value = row["value"]
        shown = _f(value, 3) if isinstance(value, float) else _f(value)
        note = f"  ({row['note']})" if row.get("note") else ""
        print(f"  {_met(row['met']).strip('*'):>12}  {row['target']}: {shown} {row['bound'] or ''}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Redo FLEET.md from saved results.")
    parser.add_argument("results", nargs="?", default=str(HERE / "fleet_results.json"))
    parser.add_argument("--markdown", default=str(ROOT / "FLEET.md"))
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    write_report(results, Path(args.markdown))
    print_targets(results)


if __name__ == "__main__":
    main()
