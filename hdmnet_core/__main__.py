"""``python -m hdmnet_core``: the command-line interface (see :mod:`hdmnet_core.cli`)."""

from hdmnet_core.cli import main

raise SystemExit(main())
