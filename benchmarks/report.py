"""Turn benchmark JSON into the generated tables of ``docs/benchmarks.md`` and ``README.md``.

    .venv/bin/python benchmarks/report.py                    # reads benchmarks/results/
    .venv/bin/python benchmarks/report.py --results DIR --doc docs/benchmarks.md --readme README.md

Each generated table sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
markers and is rewritten from ``DIR/NAME.json`` together with the machine it was measured on,
so no number inside the markers is typed by hand (``hdmnet_core.benchmark_report`` renders
them; the scripts print the same tables).
"""

from __future__ import annotations

import sys

from hdmnet_core.benchmark_report import main

if __name__ == "__main__":
    sys.exit(main())
