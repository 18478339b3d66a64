import json
from pathlib import Path

import nbformat
import pytest

from hdmnet_core.cli import main
from hdmnet_core.config import ConfigError
from hdmnet_core.engine import reproduce


def make_notebook(path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'profile = "cpu-tiny"\ndata_root = "data"\noutput_dir = None\noverrides = {}'
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "from hdmnet_core.config import Config\n"
            "from hdmnet_core.engine.reproduce import record_result\n"
            "cfg = Config.from_profile(profile, **overrides)\n"
            "record_result(output_dir, '00_tiny', 'fold', cfg.data.fold, 'fold in use')\n"
            "record_result(output_dir, '00_tiny', 'lr', cfg.train.lr, 'learning rate')"
        ),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def test_record_result_is_a_no_op_without_output_dir(tmp_path):
    reproduce.record_result(None, "00_x", "k", 1.0)
    assert list(tmp_path.iterdir()) == []


def test_record_result_replaces_the_same_key(tmp_path):
    reproduce.record_result(tmp_path, "00_x.ipynb", "k", 1.0, "first")
    reproduce.record_result(tmp_path, "00_x.ipynb", "k", 2.0, "second")
    reproduce.record_result(tmp_path, "00_x.ipynb", "other", "a")
    records = reproduce.read_results(tmp_path, "00_x.ipynb")
    assert [(r["key"], r["value"]) for r in records] == [("k", 2.0), ("other", "a")]
    with pytest.raises(TypeError, match="'bad'"):
        reproduce.record_result(tmp_path, "00_x", "bad", [1, 2])  # type: ignore[arg-type]


def test_parse_overrides():
    assert reproduce.parse_overrides(["data.fold=2", "model.matching=dot", "train.lr=0.5"]) == {
        "data.fold": 2,
        "model.matching": "dot",
        "train.lr": 0.5,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        reproduce.parse_overrides(["data.fold"])


def test_run_notebooks_executes_and_tabulates(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    make_notebook(notebooks / "00_tiny.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", notebooks)
    monkeypatch.chdir(tmp_path)  # a relative output folder, as `make reproduce` passes
    run_dir = reproduce.run_notebooks(
        "cpu-tiny", "data", Path("runs"), ("00_tiny.ipynb",), {"data.fold": 3}, run_name="r1"
    )
    assert run_dir == tmp_path / "runs" / "r1"
    executed = nbformat.read(run_dir / "00_tiny.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    summary = json.loads((run_dir / "results.json").read_text())
    results = {r["key"]: r["value"] for r in summary["notebooks"][0]["results"]}
    assert results == {"fold": 3, "lr": pytest.approx(1e-3)}
    table = (run_dir / "results.md").read_text()
    assert "| 00_tiny | fold | 3 | fold in use |" in table
    with pytest.raises(FileExistsError, match="r1"):
        reproduce.run_notebooks(
            "cpu-tiny", "data", tmp_path / "runs", ("00_tiny.ipynb",), run_name="r1"
        )


def test_cli_reports_bad_overrides_without_traceback(capsys):
    assert main(["reproduce", "--set", "data.fold=9", "--out", "/nonexistent-never-created"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.fold=9")


def test_cli_help_lists_reproduce(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "reproduce" in capsys.readouterr().out
