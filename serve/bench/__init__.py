"""Benchmarks of the service and of its core, and their arithmetic.

``python -m serve.bench`` loads the running service with N real-time streams (cli: the command; load: the
streams, through serve.client; rest: the service's and Ray's HTTP APIs; cpu: the server's CPU; scoring: WER,
lags, capacity; results: typed results, bench.json; report: markdown and plots). ``python -m serve.bench.core``
measures the core without Ray; ``python -m serve.bench.offline`` makes the offline reference transcripts;
``eval_set`` reads the evaluation manifest.
"""
