"""Versions published in ``aifinops_build_info``.

``RULES_VERSION`` is the rule bundle's version; ``rules/VERSION`` carries the same string for
tools outside Python, and a test fails when the two differ.
"""

__version__ = "0.1.0"
RULES_VERSION = "0.1.0"
