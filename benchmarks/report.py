"""Turn benchmark JSON into the generated tables of ``docs/benchmarks.md``.

    .venv/bin/python benchmarks/report.py                    # reads benchmarks/results/
    .venv/bin/python benchmarks/report.py --results DIR --doc docs/benchmarks.md

Each generated table sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
markers and is rewritten from ``DIR/NAME.json`` together with the machine it was measured on,
so no number inside the markers is typed by hand. A table whose JSON is missing is left as
it is (and said). Rendered so far: ``model_size`` (the paper's Table 4 twin).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hdmnet_core.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def machine_line(machine: Mapping[str, Any]) -> str:
    """One sentence naming the machine, threads, versions and load of a measurement."""
    gpu = machine.get("gpu") or "no GPU"
    load = machine.get("load_average") or []
    load_text = f", load average {load[0]}" if load else ""
    return (
        f"Measured {str(machine.get('date', '?'))[:10]} on {machine.get('cpu', '?')} "
        f"({machine.get('cores', '?')} cores, {machine.get('torch_threads', '?')} torch threads, "
        f"{gpu}), torch {machine.get('torch', '?')}{load_text}."
    )


def render_model_size(record: Mapping[str, Any]) -> str:
    """Table 4 twin: meta parameters, FLOPs at 473 / 633 and meta-part latency per stage count."""
    latency_keys = sorted({key for row in record["rows"] for key in row.get("latency", {})})
    header = "| stages | meta params | paper | meta GFLOPs at 473 / 633 | paper |"
    header += "".join(f" latency {key.replace('_', ' ')} (ms) |" for key in latency_keys)
    header += " paper (ms, GPU) |"
    lines = [header, "|" + "---|" * (6 + len(latency_keys))]
    for row in record["rows"]:
        paper, flops = row["paper"], row["flops"]
        cells = [
            f"S{row['num_stages']}",
            f"{row['params']['meta'] / 1e6:.2f}M",
            f"{paper['params_M']}M",
            f"{flops['473']['meta'] / 1e9:.1f} / {flops['633']['meta'] / 1e9:.1f}",
            f"{paper['gflops']}",
        ]
        for key in latency_keys:
            entry = row.get("latency", {}).get(key)
            cells.append(f"{entry['median_ms']:.0f}" if entry else "-")
        cells.append(f"{paper['ms']}")
        lines.append("| " + " | ".join(cells) + " |")
    command = " ".join(record.get("command", ["model_size.py"]))
    lines += ["", f"{machine_line(record.get('machine', {}))} Command: `{command}`."]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[Mapping[str, Any]], str]] = {"model_size": render_model_size}


def replace_generated(text: str, name: str, body: str) -> str:
    """``text`` with the block between the ``name`` markers replaced by ``body``."""
    pattern = re.compile(
        rf"(<!-- generated:{re.escape(name)} -->\n).*?(\n<!-- /generated:{re.escape(name)} -->)",
        re.DOTALL,
    )
    if not pattern.search(text):
        raise SystemExit(f"error: no <!-- generated:{name} --> markers in the document")
    return pattern.sub(lambda match: match.group(1) + body + match.group(2), text, count=1)


def render_document(text: str, results: Path) -> tuple[str, list[str]]:
    """The document with every table whose JSON exists regenerated, and what was skipped."""
    skipped = []
    for name, render in RENDERERS.items():
        path = results / f"{name}.json"
        if not path.is_file():
            skipped.append(f"{name}: no {path}")
            continue
        text = replace_generated(text, name, render(json.loads(path.read_text())))
    return text, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    text, skipped = render_document(args.doc.read_text(), args.results)
    atomic_write_text(args.doc, text)
    for line in skipped:
        print(f"left as it was: {line}")
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
