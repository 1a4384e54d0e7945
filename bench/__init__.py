"""The exporter at fleet scale: ``python -m bench`` (``make bench``) prints one table.

Modules: :mod:`bench.__main__` (the entry point and the table's driver), :mod:`bench.size`
(one size in a fresh process), :mod:`bench.upstream` (the test suite's fake upstreams in
their own process), :mod:`bench.scraper` (a scraper process), :mod:`bench.probe` (phase
timing), :mod:`bench.compare` (side by side with ``prometheus_client``) and
:mod:`bench.table`. See ``bench/README.md``.
"""
