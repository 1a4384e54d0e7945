"""The model's words: sentinel tenants, resources, cost bases and token types.

They live with the model because the model computes with them; the exposition publishes them
as label values and imports them from here (``exposition/catalog.py`` re-exports them).
"""

from __future__ import annotations

# Sentinel tenants: ordinary rows, as in OpenCost.
IDLE_TENANT = "__idle__"
UNALLOCATED_TENANT = "__unallocated__"
OTHER_TENANT = "__other__"
# The budget over every tenant (model/budgets.py; the configuration names it).
GLOBAL_TENANT = "__all__"
RESOURCES = ("gpu", "cpu", "ram", "storage", "network", "shared")
# How a GPU dollar was split among a device's holds (model/cost.py holding_shares):
# exclusive (one pod, whole GPU), mig (a MIG instance), per_process (each pod's own figure:
# dcgm-exporter's per-process series), hami (HAMi's allocated shares and live use),
# even_split (DCGM repeated the device figure on every pod: split by request, a guess),
# request_share (no measurement: as requested, e.g. OpenCost's idle row, unmeasured pods).
SPLIT_METHODS = ("exclusive", "mig", "per_process", "hami", "even_split", "request_share")
BASES = ("allocation", "usage")
# API token dollars in the per-tenant cost series (not in RESOURCES: the core never has it).
TOKENS_RESOURCE = "tokens"
TOKEN_TYPES = ("input", "output", "cached_input")
