"""Development tooling kept out of the installed package (``exporter/`` is what ships).

:mod:`devtools.devstack` starts the demo exporter, a real Prometheus and a real Alertmanager on
127.0.0.1 for ``make stack`` (``scripts/stack.py``) and the end-to-end tests. Importable from
the repository root: pytest puts it on ``sys.path`` (``tests`` is a package beside it), and
``scripts/stack.py`` inserts it.
"""
