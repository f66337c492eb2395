"""``python -m serve.bench``: the load benchmark (serve/bench/cli.py)."""

from serve.bench.cli import main

raise SystemExit(main())
