"""The stored notebooks of the course: order, parameters, size and honest nbval markers.

nbval (``make test``) executes every notebook and compares its outputs; these checks
cover what nbval does not: that each notebook of ``reproduce.NOTEBOOKS`` exists with
the papermill parameters the runner passes, a goal on top, small stored outputs that
read without a kernel, and a reason next to every output that nbval is told to ignore.

Training length under nbval: notebooks 06 (training), 07 (evaluation), 08 (ablations) and
10 (report) share one course run whose length is their ``course`` parameter. Its stored
value ``"auto"`` means the profile's full lengths when ``make reproduce`` executes them
(the runner sets ``output_dir``) and ``hdmnet_core.course.SHORT_COURSE`` (about a minute
on two cores) when nbval executes the stored notebook (``output_dir = None``); nothing
else has to be set for ``make test``.
"""

import ast
import json
import re

import pytest

from hdmnet_core.engine.reproduce import NOTEBOOK_DIR, NOTEBOOKS

MAX_BYTES = 1_000_000
RUNNER_PARAMETERS = {"profile", "data_root", "output_dir", "overrides"}
COURSE_PARAMETERS = RUNNER_PARAMETERS | {"fold", "shots", "seed", "device"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def load(name):
    return json.loads((NOTEBOOK_DIR / name).read_text())


def source(cell):
    return "".join(cell["source"])


def test_the_course_is_ordered_and_complete():
    assert NOTEBOOKS[0] == "00_episodes_and_data.ipynb"
    numbers = [int(name[:2]) for name in NOTEBOOKS]
    assert numbers == list(range(len(NOTEBOOKS)))
    on_disk = sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert list(NOTEBOOKS) == on_disk


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_goal_and_parameters(name):
    cells = load(name)["cells"]
    assert cells[0]["cell_type"] == "markdown" and "**Goal.**" in source(cells[0])
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"{name}: needs exactly one cell tagged 'parameters'"
    assigned = {
        target.id
        for node in ast.parse(source(tagged[0])).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    wanted = RUNNER_PARAMETERS if name.startswith("00") else COURSE_PARAMETERS
    assert wanted <= assigned, f"{name}: parameters cell lacks {sorted(wanted - assigned)}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_executed_small_and_without_errors(name):
    path = NOTEBOOK_DIR / name
    assert path.stat().st_size <= MAX_BYTES, f"{name}: {path.stat().st_size} bytes stored"
    notebook = load(name)
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code), f"{name}: not fully executed"
    outputs = [o for c in code for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no figure"
    widget_outputs = [o for o in outputs if WIDGET_VIEW in o.get("data", {})]
    for output in widget_outputs:  # readable without a widget manager
        assert "image/png" in output["data"], f"{name}: a widget without a static preview"
    if widget_outputs:  # and JupyterLab can draw the stored widgets before a run
        state = notebook["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
        ids = {o["data"][WIDGET_VIEW]["model_id"] for o in widget_outputs}
        assert ids <= set(state), f"{name}: widget state not stored for {sorted(ids - set(state))}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_ignored_output_says_why(name):
    for cell in load(name)["cells"]:
        if cell["cell_type"] != "code":
            continue
        text = source(cell)
        tags = cell["metadata"].get("tags", [])
        assert not {"nbval-ignore-output", "nbval-skip"} & set(tags), (
            f"{name}: use a '# NBVAL_IGNORE_OUTPUT' comment and a '# why: ...' line, not a bare tag"
        )
        lines = [line.strip() for line in text.splitlines()]
        for number, line in enumerate(lines):
            if "NBVAL_" not in line:
                continue
            # nbval reads a marker only as a whole comment line; the reason follows it
            assert re.fullmatch(r"#\s*NBVAL_[A-Z_]+", line), (
                f"{name}: {line!r} is not a marker nbval reads"
            )
            reason = lines[number + 1] if number + 1 < len(lines) else ""
            assert re.match(r"#\s*why: \S", reason), f"{name}: {line} without a '# why: ...' line"


COURSE_NOTEBOOKS = (
    "06_training.ipynb",
    "07_evaluation.ipynb",
    "08_ablations.ipynb",
    "10_report.ipynb",
)


def parameter_values(name):
    tagged = [c for c in load(name)["cells"] if "parameters" in c["metadata"].get("tags", [])]
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(source(tagged[0])).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }


@pytest.mark.parametrize("name", COURSE_NOTEBOOKS)
def test_course_notebooks_are_short_under_nbval_and_full_under_the_runner(name):
    values = parameter_values(name)
    assert values["course"] == "auto" and values["output_dir"] is None
    code = "\n".join(source(c) for c in load(name)["cells"] if c["cell_type"] == "code")
    # one config and one shared run for all four: the same lengths, the same checkpoints
    assert "course_tools.course_config(" in code and "course_tools.train_course(" in code
    assert "course_tools.course_dir(output_dir, course, config)" in code
