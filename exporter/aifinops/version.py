"""Versions published in ``aifinops_build_info``.

The rule bundle's version lives in ``rules/VERSION`` (one place); it is read at start-up
from the repository or from the copy packaged with the exporter.
"""

__version__ = "0.1.0"
