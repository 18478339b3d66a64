"""benchmarks/report.py: generated tables come from JSON only, nothing else in a document moves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hdmnet_core import benchmark_report as report

ROOT = Path(__file__).resolve().parents[1]
MACHINE = {
    "date": "2026-12-02T09:55:21Z",
    "cpu": "Test CPU",
    "cores": 2,
    "torch_threads": 2,
    "gpu": None,
    "torch": "2.14.1",
    "load_average": [1.0],
}


def model_size_record() -> dict[str, Any]:
    """A model_size.json as the script writes it, two stage counts, made-up values."""

    def row(stages: int, meta: int, gflops: float, ms: float) -> dict[str, object]:
        return {
            "num_stages": stages,
            "params": {"meta": meta},
            "flops": {"473": {"meta": gflops * 1e9}, "633": {"meta": 2 * gflops * 1e9}},
            "latency": {"cpu_fp32": {"median_ms": ms}},
            "paper": {"params_M": 1.3, "gflops": 8.8, "ms": 15.1},
        }

    return {
        "benchmark": "model_size",
        "command": ["model_size.py", "--repeats", "3"],
        "machine": MACHINE,
        "rows": [row(1, 1_563_458, 15.08, 203.4), row(3, 3_309_634, 17.78, 243.3)],
    }


def _speed_entry(seconds: float, faithful: float, diff: float = 1e-7) -> dict[str, Any]:
    return {
        "median_s": seconds,
        "speedup_vs_faithful": faithful / seconds,
        "vs_faithful": {"final_logits_max_abs_diff": diff, "final_logits_allclose": diff < 1e-3},
    }


def model_speed_record() -> dict[str, Any]:
    def shots(k: int, scale: float) -> dict[str, Any]:
        settings = {
            "faithful": _speed_entry(4.0 * scale, 4.0 * scale, 0.0),
            "pooled_branch_conv": _speed_entry(3.0 * scale, 4.0 * scale),
            "mkldnn": _speed_entry(2.0 * scale, 4.0 * scale),
            "bf16_mkldnn": _speed_entry(1.0 * scale, 4.0 * scale, 3e-3),
        }
        return {"shots": k, "settings": settings, "meta_part": {"batched": 0.2, "faithful": 0.3}}

    return {
        "benchmark": "model_speed",
        "command": ["model_speed.py"],
        "machine": MACHINE,
        "device": "cpu",
        "size": 473,
        "backbone": "resnet50",
        "repeats": [3, 3],
        "results": [shots(1, 1.0), shots(5, 4.0)],
        "what": {"faithful": "official order", "mkldnn": "blocked backbone"},
    }


def evaluation_speed_record(hours: float = 2.0) -> dict[str, Any]:
    projected = {
        "uncached_hours": 10.0,
        "cached_hours": hours,
        "cache_gb_per_fold_at_most": 3.0,
        "fits_default_budget": True,
    }
    row = {
        "shots": 1,
        "end_to_end_s": {"uncached": 2.0, "cached": 0.25},
        "uncached_s": 1.8,
        "cached_s": 0.2,
        "build_s_per_image": 1.5,
        "protocol_speedup": 6.5,
        "same_counts": True,
        "projected": {"pascal": projected, "coco": {**projected, "fits_default_budget": False}},
    }
    setting = {"seeds": 10, "backbone": "resnet50", "size": 473, "device": "cpu", "episodes": 3}
    return {
        "benchmark": "evaluation_speed",
        "command": ["evaluation_speed.py"],
        "machine": MACHINE,
        "setting": setting,
        "results": [row],
    }


def training_speed_record() -> dict[str, Any]:
    row = {
        "profile": "cpu-tiny",
        "amp": "off",
        "workers": 0,
        "base_seconds_per_step": 0.1,
        "meta_seconds_per_step": 0.25,
        "meta_episodes_per_second": 64.0,
        "base_peak_memory_mb": 900.0,
        "meta_peak_memory_mb": 1200.0,
        "projected_course_minutes": 6.7,
        "loading_episodes_per_second_per_worker": 30.0,
        "workers_to_keep_up": 3,
    }
    return {
        "benchmark": "training_speed",
        "command": ["training_speed.py"],
        "machine": MACHINE,
        "device": "cpu",
        "steps": 60,
        "rows": [row],
    }


def write_results(folder: Path, *records: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        (folder / f"{record['benchmark']}.json").write_text(json.dumps(record))
    return folder


def run_report(results: Path, doc: Path, readme: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--results", str(results)]
    command += ["--doc", str(doc), "--readme", str(readme)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def block(name: str, body: str = "stale") -> str:
    return f"<!-- generated:{name} -->\n{body}\n<!-- /generated:{name} -->"


def test_each_table_renders_its_numbers() -> None:
    speed = report.render_model_speed(model_speed_record())
    assert "| setting | 1-shot (s) | x faithful | 5-shot (s) | x faithful |" in speed
    assert "| `mkldnn` | 2.00 | 2.00 | 8.00 | 2.00 | 1.0e-07 | yes | blocked backbone |" in speed
    assert "| `bf16_mkldnn` | 1.00 | 4.00 | 4.00 | 4.00 | 3.0e-03 | no |  |" in speed
    evaluation = report.render_evaluation_speed(evaluation_speed_record())
    assert "| 1 | 0.500 / 4.000 | 8.0 | 9.0 | 1.50 | 6.5 | 10.0 / 2.0 | 10.0 / 2.0 |" in evaluation
    assert "3 GB (over budget: uncached) |" in evaluation and "identical" in evaluation
    training = report.render_training_speed(training_speed_record())
    # a record from before compile and the loss were measured
    assert (
        "| cpu-tiny | off | off | 0 | 0.100 | 0.250 | 64.0 | – | 1200 | 6.7 | 30.0 | 3 |"
        in training
    )
    assert "60 stage-1 and 60 stage-2 steps per setting on cpu" in training
    record = training_speed_record()
    full_size = {
        **record["rows"][0],
        "profile": "pascal-r50",
        "amp": "bf16",
        "compile": True,
        "meta_loss_first_window": 0.9123,
        "meta_loss_last_window": 0.4051,
        "projected_course_minutes": None,
    }
    record.update(base_steps=50, steps=200, rows=[full_size])
    training = report.render_training_speed(record)
    assert (
        "| pascal-r50 | bf16 | on | 0 | 0.100 | 0.250 | 64.0 | 0.912 → 0.405 | 1200 | epochs |"
        in training
    )
    assert "50 stage-1 and 200 stage-2 steps per setting on cpu" in training


def test_report_rewrites_marked_tables_of_both_documents_and_nothing_else(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "results",
        model_speed_record(),
        evaluation_speed_record(),
        training_speed_record(),
    )
    write_results(results / "cuda", evaluation_speed_record(hours=0.1))
    doc, readme = tmp_path / "benchmarks.md", tmp_path / "README.md"
    doc.write_text(
        "# Doc\nprose 1\n"
        + block("model_speed")
        + "\nprose 2\n"
        + block("evaluation_speed")
        + "\n"
        + block("evaluation_speed:cuda")
        + "\n"
        + block("data_loading", "hand-kept")
        + "\nend\n"
    )
    readme.write_text("# Readme\n" + block("summary") + "\nafter\n")
    result = run_report(results, doc, readme)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "left as it was: data_loading: no data_loading.json" in result.stdout
    text = doc.read_text()
    assert text.startswith("# Doc\nprose 1\n<!-- generated:model_speed -->\n| setting |")
    assert "\nprose 2\n" in text and text.endswith(
        "hand-kept\n<!-- /generated:data_loading -->\nend\n"
    )
    assert text.count("stale") == 0
    cpu, cuda = text.split("<!-- generated:evaluation_speed:cuda -->")
    assert "10.0 / 2.0" in cpu and "10.0 / 0.1" in cuda  # each device from its own folder
    assert "Measured 2026-12-02 on Test CPU (2 cores, 2 torch threads, no GPU)" in cpu
    summary = readme.read_text()
    assert "| evaluation forward 1 / 5-shot at 473, `inference_copy(m)`, exact fp32 |" in summary
    assert "2.00 s / 8.00 s (2.00x / 2.00x) | model_speed |" in summary
    assert "| 6.5x; 2.0 h | evaluation_speed |" in summary
    assert "| cpu-tiny course, both stages (steps x measured step time) | 6.7 min |" in summary
    assert summary.startswith("# Readme\n<!-- generated:summary -->\n") and summary.endswith(
        "<!-- /generated:summary -->\nafter\n"
    )
    before = doc.stat().st_mtime_ns
    again = run_report(results, doc, readme)  # idempotent: nothing to rewrite
    assert again.returncode == 0 and doc.stat().st_mtime_ns == before


def test_report_refuses_a_non_finite_measurement_and_writes_nothing(tmp_path: Path) -> None:
    record = training_speed_record()
    record["rows"][0]["meta_seconds_per_step"] = float("nan")
    results = write_results(tmp_path / "results", record)
    doc, readme = tmp_path / "benchmarks.md", tmp_path / "README.md"
    doc.write_text(block("training_speed"))
    readme.write_text("readme\n")
    result = run_report(results, doc, readme)
    assert result.returncode == 2
    assert "training_speed.json: rows[0].meta_seconds_per_step: nan" in result.stderr
    assert "Traceback" not in result.stderr and doc.read_text() == block("training_speed")


def test_replace_generated_names_missing_markers() -> None:
    with pytest.raises(ValueError, match="no <!-- generated:model_size --> markers"):
        report.replace_generated("no markers here", "model_size", "body")


def test_the_project_documents_have_their_generated_tables() -> None:
    """The shipped documents carry markers, and each block is what the JSON it names makes
    (a hand edit inside the markers would be overwritten: none must be needed)."""
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in report.RENDERERS:
        assert report.has_markers(doc, name), name
    assert report.has_markers(readme, "summary")
    for text in (doc, readme):
        opened = re.findall(r"<!-- generated:([\w:]+) -->", text)
        assert opened == re.findall(r"<!-- /generated:([\w:]+) -->", text)


def test_gpu_results_go_to_their_own_folder() -> None:
    from hdmnet_core.benchmark import QUICK_RESULTS_DIR, RESULTS_DIR, default_out_dir

    assert default_out_dir(quick=False, device="cpu") == RESULTS_DIR
    assert default_out_dir(quick=False, device="cuda") == RESULTS_DIR / "cuda"  # NAME:cuda tables
    assert default_out_dir(quick=True, device="cuda") == QUICK_RESULTS_DIR  # never the documents


def test_report_regenerates_the_table_4_twin_exactly(tmp_path: Path) -> None:
    results = write_results(tmp_path / "results", model_size_record())
    doc, readme = tmp_path / "benchmarks.md", tmp_path / "README.md"
    before, after = "# Title\nhand-written prose\n", "\nmore prose\n"
    doc.write_text(before + block("model_size") + after)
    readme.write_text("no markers\n")
    result = run_report(results, doc, readme)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = (
        "| stages | meta params | paper | meta GFLOPs at 473 / 633 | paper "
        "| latency cpu fp32 (ms) | paper (ms, GPU) |\n"
        "|---|---|---|---|---|---|---|\n"
        "| S1 | 1.56M | 1.3M | 15.1 / 30.2 | 8.8 | 203 | 15.1 |\n"
        "| S3 | 3.31M | 1.3M | 17.8 / 35.6 | 8.8 | 243 | 15.1 |\n\n"
        "Measured 2026-12-02 on Test CPU (2 cores, 2 torch threads, no GPU), torch 2.14.1, "
        "load average 1.0. Command: `model_size.py --repeats 3`."
    )
    assert doc.read_text() == before + block("model_size", expected) + after
    assert readme.read_text() == "no markers\n"


def test_machine_sentence_names_the_instruction_set_when_recorded() -> None:
    emulated = {**MACHINE, "cpu_instructions": {"capability": "AVX2", "native_bf16": False}}
    native = {**MACHINE, "cpu_instructions": {"capability": "AVX512", "native_bf16": True}}
    assert report.machine_line(emulated).startswith(
        "Measured 2026-12-02 on Test CPU (AVX2, bf16 emulated, 2 cores, 2 torch threads, no GPU)"
    )
    assert "(AVX512, native bf16, 2 cores," in report.machine_line(native)
    assert "(2 cores," in report.machine_line(MACHINE)  # records written before the field
