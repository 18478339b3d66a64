"""Benchmark JSON -> the generated tables of ``docs/benchmarks.md`` and ``README.md``.

    .venv/bin/python benchmarks/report.py                 # reads benchmarks/results/
    .venv/bin/python benchmarks/report.py --results DIR --doc docs/benchmarks.md --readme README.md

A generated table sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
and is rewritten from ``DIR/NAME.json`` (``<!-- generated:NAME:cuda -->``: from
``DIR/cuda/NAME.json``, what ``python -m hdmnet_core benchmark --device cuda`` writes)
together with the machine and the command it was measured with, so no number inside the
markers is typed by hand. A table whose JSON is missing is left as it is, and said.

The scripts in ``benchmarks/`` print their tables with the same functions
(:data:`RENDERERS`), so what a run prints is what the document shows.

This module reads JSON only: no torch, fast to import.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hdmnet_core.atomic import atomic_write_text

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
DOC = PROJECT / "docs" / "benchmarks.md"
README = PROJECT / "README.md"
DEVICES = ("", "cuda")
"""Marker suffixes: ``NAME`` reads ``results/NAME.json``, ``NAME:cuda`` ``results/cuda/NAME.json``."""

Record = Mapping[str, Any]


def machine_line(machine: Mapping[str, Any]) -> str:
    """One sentence naming the machine, threads, versions and load of a measurement."""
    gpu = machine.get("gpu") or "no GPU"
    load = machine.get("load_average") or []
    load_text = f", load average {load[0]}" if load else ""
    threads = machine.get("torch_threads", "?")
    isa = machine.get("cpu_instructions") or {}
    isa_text = ""
    if isa.get("capability"):
        native = isa.get("native_bf16")
        bf16 = "" if native is None else (", native bf16" if native else ", bf16 emulated")
        isa_text = f"{isa['capability']}{bf16}, "
    return (
        f"Measured {str(machine.get('date', '?'))[:10]} on {machine.get('cpu', '?')} "
        f"({isa_text}{machine.get('cores', '?')} cores, "
        f"{threads} torch thread{'' if threads == 1 else 's'}, "
        f"{gpu}), torch {machine.get('torch', '?')}{load_text}."
    )


def command_text(record: Record) -> str:
    """The recorded command line, paths inside the project relative to it."""
    words = record.get("command", [f"{record.get('benchmark', '?')}.py"])
    prefix = f"{PROJECT}/"
    return " ".join(str(word).replace(prefix, "") for word in words)


def provenance(record: Record) -> str:
    """The machine sentence and the command that wrote ``record``."""
    return f"{machine_line(record.get('machine', {}))} Command: `{command_text(record)}`."


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------ renderers
def render_model_size(record: Record) -> str:
    """Table 4 twin: meta parameters, FLOPs at 473 / 633 and meta-part latency per stage count."""
    latency_keys = sorted({key for row in record["rows"] for key in row.get("latency", {})})
    header = ["stages", "meta params", "paper", "meta GFLOPs at 473 / 633", "paper"]
    header += [f"latency {key.replace('_', ' ')} (ms)" for key in latency_keys]
    header.append("paper (ms, GPU)")
    rows = []
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
        rows.append(cells)
    return markdown_table(header, rows)


def render_model_speed(record: Record) -> str:
    """Evaluation forward per setting (each adds one thing to the row above), per shot
    count: median seconds, speed-up over the faithful dataflow, fp32 check."""
    results = record["results"]
    header = ["setting"]
    for result in results:
        header += [f"{result['shots']}-shot (s)", "x faithful"]
    header += ["max abs logit difference", "allclose at 1e-3", "what it does"]
    names = list(record.get("settings_order") or results[0]["settings"])
    rows = []
    for name in names:
        cells = [f"`{name}`"]
        worst, close = 0.0, True
        for result in results:
            entry = result["settings"].get(name)
            if entry is None:
                cells += ["-", "-"]
                continue
            cells += [f"{entry['median_s']:.2f}", f"{entry['speedup_vs_faithful']:.2f}"]
            worst = max(worst, entry["vs_faithful"]["final_logits_max_abs_diff"])
            close = close and entry["vs_faithful"]["final_logits_allclose"]
        what = str(record.get("what", {}).get(name, ""))
        cells += [f"{worst:.1e}", "yes" if close else "no", what]
        rows.append(cells)
    meta = ", ".join(
        f"{r['shots']}-shot {r['meta_part']['batched']:.2f} s (faithful order "
        f"{r['meta_part']['faithful']:.2f} s)"
        for r in results
    )
    note = (
        f"{record['backbone']} at {record['size']} x {record['size']}, batch 1, "
        f"{record['device']}, median of {'/'.join(str(n) for n in record['repeats'])} "
        f"interleaved runs. Meta part alone: {meta}."
    )
    return markdown_table(header, rows) + "\n\n" + note


def render_evaluation_speed(record: Record) -> str:
    """Episodes/s with and without the feature cache, the protocol speed-up and the
    projected wall time of the full PASCAL and COCO protocols."""
    setting = record["setting"]
    header = [
        "shots",
        "episodes/s uncached / cached",
        "x end to end",
        "x model only",
        "cache build (s/image)",
        f"{setting['seeds']}-seed protocol x",
        "PASCAL-5i h uncached / cached",
        "COCO-20i h uncached / cached",
        "COCO cache per fold",
    ]
    rows = []
    for r in record["results"]:
        e, p, c = r["end_to_end_s"], r["projected"]["pascal"], r["projected"]["coco"]
        fits = "fits" if c["fits_default_budget"] else "over budget: uncached"
        rows.append(
            [
                str(r["shots"]),
                f"{1 / e['uncached']:.3f} / {1 / e['cached']:.3f}",
                f"{e['uncached'] / e['cached']:.1f}",
                f"{r['uncached_s'] / r['cached_s']:.1f}",
                f"{r['build_s_per_image']:.2f}",
                f"{r['protocol_speedup']:.1f}",
                f"{p['uncached_hours']:.1f} / {p['cached_hours']:.1f}",
                f"{c['uncached_hours']:.1f} / {c['cached_hours']:.1f}",
                f"{c['cache_gb_per_fold_at_most']:.0f} GB ({fits})",
            ]
        )
    same = all(r["same_counts"] for r in record["results"])
    note = (
        f"{setting['backbone']} at {setting['size']} x {setting['size']}, {setting['device']}, "
        f"batch 1, `inference_copy`, {setting['episodes']} timed episodes per shot count; "
        f"cached and uncached intersection/union sums {'identical' if same else 'DIFFER'}."
    )
    checks = [r["check_s"] for r in record["results"] if "check_s" in r]
    if checks:
        note += (
            f" Cached end to end leaves out the check, once per seed, that the cache holds "
            f"the model's frozen weights ({max(checks):.2f} s: a hash of them); the protocol "
            "and its projections count it once per seed and fold."
        )
    return markdown_table(header, rows) + "\n\n" + note


def render_training_speed(record: Record) -> str:
    """Seconds per step of both stages, the stage-2 loss, peak memory, projected course,
    loading per worker. Records from before ``compile`` and the loss were measured show
    "–" there (and "off" for compile, the only setting they timed)."""
    header = [
        "profile",
        "amp",
        "compile",
        "workers",
        "stage 1 s/step",
        "stage 2 s/step",
        "stage 2 episodes/s",
        "stage 2 loss, first → last window",
        "peak MB",
        "course min",
        "loading episodes/s per worker",
        "workers to keep up",
    ]
    rows = [
        [
            r["profile"],
            r["amp"],
            "on" if r.get("compile") else "off",
            str(r["workers"]),
            f"{r['base_seconds_per_step']:.3f}",
            f"{r['meta_seconds_per_step']:.3f}",
            f"{r['meta_episodes_per_second']:.1f}",
            loss_change(r.get("meta_loss_first_window"), r.get("meta_loss_last_window")),
            f"{max(r['base_peak_memory_mb'], r['meta_peak_memory_mb']):.0f}",
            "epochs"
            if r["projected_course_minutes"] is None
            else f"{r['projected_course_minutes']:.1f}",
            f"{r['loading_episodes_per_second_per_worker']:.1f}",
            str(r["workers_to_keep_up"]),
        ]
        for r in record["rows"]
    ]
    base_steps = record.get("base_steps", record["steps"])
    note = (
        f"{base_steps} stage-1 and {record['steps']} stage-2 steps per setting on "
        f"{record['device']}; s/step = the median logged rate after the first window "
        "(start-up and compilation excluded); course min = the profile's steps x these times "
        '(validation excluded; "epochs": a full-size profile, whose length is its real '
        "dataset's); workers to keep up = ceil(training episodes/s / loading episodes/s of "
        "one worker)."
    )
    return markdown_table(header, rows) + "\n\n" + note


def loss_change(first: float | None, last: float | None) -> str:
    """``"0.912 → 0.405"``, or "–" where a record did not measure it."""
    if first is None or last is None:
        return "–"
    return f"{first:.3f} → {last:.3f}"


def render_data_loading(record: Record) -> str:
    """Episodes/s of one data-loading worker per source and kind of work."""
    rows = [
        [name, f"{value:.1f}"] for name, value in record["episodes_per_second_per_worker"].items()
    ]
    note = (
        f"{record['data']}; {record['shots']}-shot at {record['size']} x {record['size']}, "
        "one process on one thread (= one DataLoader worker)."
    )
    return markdown_table(["measurement", "episodes/s"], rows) + "\n\n" + note


RENDERERS: dict[str, Callable[[Record], str]] = {
    "model_size": render_model_size,
    "model_speed": render_model_speed,
    "evaluation_speed": render_evaluation_speed,
    "training_speed": render_training_speed,
    "data_loading": render_data_loading,
}
"""Benchmark name -> its table (without the machine sentence)."""


# -------------------------------------------------------------------- README summary
def summary_rows(records: Mapping[str, Record]) -> list[list[str]]:
    """The README's short table: a few headline numbers, each naming its benchmark."""
    rows: list[list[str]] = []
    speed = records.get("model_speed")
    if speed is not None:
        settings = {r["shots"]: r["settings"] for r in speed["results"]}
        size = speed["size"]
        for name, label in (
            ("faithful", "official dataflow (`faithful`)"),
            ("pooled_branch_conv", "`HDMNet` default, exact"),
            ("mkldnn", "`inference_copy(m)`, exact fp32"),
            ("bf16_mkldnn", "`inference_copy(m, backbone_dtype=bf16)` + bf16 autocast"),
        ):
            if all(name in s for s in settings.values()):
                times = " / ".join(f"{s[name]['median_s']:.2f} s" for s in settings.values())
                gains = " / ".join(
                    f"{s[name]['speedup_vs_faithful']:.2f}x" for s in settings.values()
                )
                shots = " / ".join(f"{k}" for k in settings)
                rows.append(
                    [
                        f"evaluation forward {shots}-shot at {size}, {label}",
                        f"{times} ({gains})",
                        "model_speed",
                    ]
                )
    size_record = records.get("model_size")
    if size_record is not None:
        for row in size_record["rows"]:
            if row["num_stages"] == 3:
                rows.append(
                    [
                        "meta part S3 (official): parameters, GFLOPs at 473",
                        f"{row['params']['meta'] / 1e6:.2f} M, "
                        f"{row['flops']['473']['meta'] / 1e9:.1f}",
                        "model_size",
                    ]
                )
    evaluation = records.get("evaluation_speed")
    if evaluation is not None:
        for r in evaluation["results"]:
            p = r["projected"]["pascal"]
            rows.append(
                [
                    f"{evaluation['setting']['seeds']}-seed protocol, {r['shots']}-shot: "
                    "feature cache speed-up; PASCAL-5i 4 folds cached",
                    f"{r['protocol_speedup']:.1f}x; {p['cached_hours']:.1f} h",
                    "evaluation_speed",
                ]
            )
    training = records.get("training_speed")
    if training is not None:
        for r in training["rows"]:
            plain = r["amp"] == "off" and not r.get("compile") and r["workers"] == 0
            if r["profile"] == "cpu-tiny" and plain:
                rows.append(
                    [
                        "cpu-tiny course, both stages (steps x measured step time)",
                        f"{r['projected_course_minutes']:.1f} min",
                        "training_speed",
                    ]
                )
    return rows


def render_summary(records: Mapping[str, Record]) -> str:
    rows = summary_rows(records)
    table = markdown_table(["measurement", "value", "benchmark"], rows)
    machines = [record.get("machine", {}) for record in records.values()]
    where = sorted(
        {
            f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores, {m.get('gpu') or 'no GPU'}), "
            f"torch {m.get('torch', '?')}"
            for m in machines
        }
    )
    dates = sorted({str(m.get("date", "?"))[:10] for m in machines})
    return (
        table + f"\n\nMeasured {' to '.join(dict.fromkeys([dates[0], dates[-1]]))} on "
        f"{'; '.join(where)}. Threads, load and commands: each table in `docs/benchmarks.md`."
    )


# ------------------------------------------------------------------------- documents
def marker_pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- generated:{re.escape(name)} -->\n).*?(\n<!-- /generated:{re.escape(name)} -->)",
        re.DOTALL,
    )


def has_markers(text: str, name: str) -> bool:
    return marker_pattern(name).search(text) is not None


def replace_generated(text: str, name: str, body: str) -> str:
    """``text`` with the block between the ``name`` markers replaced by ``body``."""
    pattern = marker_pattern(name)
    if not pattern.search(text):
        raise ValueError(f"no <!-- generated:{name} --> markers in the document")
    return pattern.sub(lambda match: match.group(1) + body + match.group(2), text, count=1)


def load_records(results: Path, device: str = "") -> dict[str, Record]:
    """Every benchmark JSON of ``results`` (``results/<device>/`` for a device suffix)."""
    folder = results / device if device else results
    records = {}
    for name in RENDERERS:
        path = folder / f"{name}.json"
        if path.is_file():
            records[name] = json.loads(path.read_text())
    return records


def marker_name(name: str, device: str) -> str:
    return f"{name}:{device}" if device else name


def render_document(
    text: str, records_by_device: Mapping[str, Mapping[str, Record]], results: Path
) -> tuple[str, list[str]]:
    """The document with every marked table whose JSON exists regenerated (the records
    of :func:`load_records` per device suffix, read from ``results``), and what was left
    as it was (with why)."""
    skipped = []
    for device in DEVICES:
        records = records_by_device.get(device, {})
        for name, render in RENDERERS.items():
            marker = marker_name(name, device)
            if not has_markers(text, marker):
                continue
            if name not in records:
                skipped.append(f"{marker}: no {name}.json in {results / device}")
                continue
            body = render(records[name]) + "\n\n" + provenance(records[name])
            text = replace_generated(text, marker, body)
        summary = marker_name("summary", device)
        if has_markers(text, summary):
            if records:
                text = replace_generated(text, summary, render_summary(records))
            else:
                skipped.append(f"{summary}: no benchmark JSON in {results / device}")
    return text, skipped


def rewrite(
    path: Path, records_by_device: Mapping[str, Mapping[str, Record]], results: Path
) -> list[str]:
    """Regenerate ``path``'s marked tables in place (atomically); what was skipped."""
    text = path.read_text()
    new, skipped = render_document(text, records_by_device, results)
    if new != text:
        atomic_write_text(path, new)
    return skipped


def check_finite(records: Mapping[str, Record]) -> None:
    """A NaN in a JSON means a broken measurement: refuse to publish it."""

    def walk(value: Any, where: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: {value} (not a finite number)")
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    for name, record in records.items():
        for key, value in record.items():
            if key not in ("machine", "command"):
                walk(value, f"{name}.json: {key}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    records_by_device = {device: load_records(args.results, device) for device in DEVICES}
    for device, records in records_by_device.items():
        try:
            check_finite(records)
        except ValueError as error:
            parser.exit(2, f"error: {args.results / device}/{error}; nothing was rewritten\n")
    for path in (args.doc, args.readme):
        if not path.is_file():
            parser.exit(2, f"error: {path}: no such file; nothing was rewritten\n")
    for path in (args.doc, args.readme):
        for line in rewrite(path, records_by_device, args.results):
            print(f"{path.name}: left as it was: {line}")
        print(f"wrote {path}")
    return 0
