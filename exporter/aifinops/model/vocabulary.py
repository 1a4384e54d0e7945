"""The model's words: sentinel tenants, resources, cost bases and token types.

They live with the model because the model computes with them; the exposition publishes them
as label values and imports them from here (``exposition/catalog.py`` re-exports them).
"""

from __future__ import annotations

# Sentinel tenants: ordinary rows, as in OpenCost.
IDLE_TENANT = "__idle__"
UNALLOCATED_TENANT = "__unallocated__"
OTHER_TENANT = "__other__"
RESOURCES = ("gpu", "cpu", "ram", "storage", "network", "shared")
BASES = ("allocation", "usage")
# API token dollars in the per-tenant cost series (not in RESOURCES: the core never has it).
TOKENS_RESOURCE = "tokens"
TOKEN_TYPES = ("input", "output", "cached_input")
