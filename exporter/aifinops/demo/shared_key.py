"""The answer key for shared GPUs: HAMi fractions and dcgm-exporter per-process series.

Computed from the simulation's own facts — each container's allocated cores and memory, each
pod's true use, each device's list price and the replicas the device plugin advertises — with
the issue-18 rules written out here in a few lines, never with the exporter's code (no import of
``aifinops.model`` or ``aifinops.sources``): the key must not share assumptions with what it
checks.

Rules (docs/shared-gpus.md states them for the exporter):

* **HAMi** (``method="hami"``): a container's billing share is its cores (``cores/100``), its
  memory (``memory/device memory``) or a mix ``w × cores + (1 − w) × memory``; allocation basis
  = device price × share, GPU count = share. Usage basis = price × the container's SM use (its
  monitor figure / 100). A container that has not touched CUDA has no monitor figure: it is
  *held* — it pays its share on both bases and is listed in :attr:`SharedKey.held`.
* **Per-process time-slicing** (``method="per_process"``): OpenCost bills each pod its replica
  (``1/replicas`` of the GPU; the key rounds each window's dollars as OpenCost prints them);
  GPU count = that request. Usage basis = price × the pod's own per-process utilization / 100
  (scaled down if the pods' figures sum over 100 %).
* **MIG** (``method="mig"``): a pod alone on an instance pays price × slices/7 ×
  instance activity on the usage basis. Where several pods time-share an instance only
  memory is per process, so the instance's activity (repeated on each pod) is split by their
  requests (``method="even_split"``, the guess the exporter must own up to).
* Whatever a device's holders do not pay of its price is ``__idle__``'s (:attr:`SharedKey.idle`).

Units: USD per hour, GPU-equivalents, shares of a physical GPU's time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from aifinops.demo.cluster.wire import opencost_round
from aifinops.demo.hami import HAMI_TOTAL_CORES, HamiContainer, HamiDevice, HamiPool
from aifinops.demo.perprocess import PerProcessPool, SharedHolder

BillingShare = Literal["cores", "memory", "mix"]
SharedMethod = Literal["hami", "per_process", "mig", "even_split"]
SHARED_BASES: tuple[str, ...] = ("allocation", "usage")


@dataclass(frozen=True, slots=True)
class SharedKey:
    """What a correct exporter publishes for the shared GPUs of the pools at ``now``.

    ``cost[(basis, tenant)]``: GPU USD/h per tenant on these GPUs; ``gpus[tenant]``: the
    GPU-equivalents it holds there (billing share or request); ``used[tenant]``: its share of
    the GPUs' time (held containers at their share); ``method_cost[(basis, method)]``: the
    tenants' dollars by split method; ``idle[basis]``: the devices' dollars no tenant pays;
    ``device_cost``: the devices' list price per hour (what every basis sums to); ``held``:
    ``(namespace, pod)`` of HAMi containers without a usage series. ``gpus_by_model`` and
    ``used_by_model`` split ``gpus`` and ``used`` by ``(tenant, GPU model)``.
    """

    now: float
    window_hours: float
    billing_share: BillingShare
    core_weight: float
    cost: Mapping[tuple[str, str], float]
    gpus: Mapping[str, float]
    used: Mapping[str, float]
    method_cost: Mapping[tuple[str, str], float]
    idle: Mapping[str, float]
    device_cost: float
    held: tuple[tuple[str, str], ...]
    tenants: tuple[str, ...]
    gpus_by_model: Mapping[tuple[str, str], float]
    used_by_model: Mapping[tuple[str, str], float]
    tenant_method_cost: Mapping[tuple[str, str, str], float]  # (basis, tenant, method)
    idle_gpus: Mapping[tuple[str, str], float]  # (tenant, GPU model): idle holds' shares
    idle_gpu_cost: Mapping[tuple[str, str], float]  # their allocation-basis USD/h

    def rate(self, basis: str, tenant: str) -> float:
        """USD/h of ``tenant`` on these GPUs under ``basis``; 0 when it holds none."""
        return self.cost.get((basis, tenant), 0.0)

    def tenant_methods(self, basis: str, tenant: str) -> dict[str, float]:
        """``tenant``'s USD/h under ``basis`` by split method."""
        return {
            m: v for (b, t, m), v in self.tenant_method_cost.items() if b == basis and t == tenant
        }

    def rate_total(self, basis: str) -> float:
        """USD/h every tenant pays on these GPUs under ``basis``."""
        return math.fsum(v for (b, _), v in self.cost.items() if b == basis)


def billing_fraction(
    c: HamiContainer, d: HamiDevice, billing_share: BillingShare, core_weight: float
) -> float:
    """The container's billing share of its device (0–1) under the configured rule."""
    cores = c.cores / HAMI_TOTAL_CORES
    memory = c.memory_mib / d.memory_mib
    if billing_share == "cores":
        return cores
    if billing_share == "memory":
        return memory
    return core_weight * cores + (1.0 - core_weight) * memory


def answer_key(
    now: float,
    *,
    hami: HamiPool | None = None,
    per_process: PerProcessPool | None = None,
    window_hours: float = 1.0,
    billing_share: BillingShare = "cores",
    core_weight: float = 0.5,
    idle_threshold: float = 0.05,
) -> SharedKey:
    """The key for ``hami`` and ``per_process`` at ``now`` (OpenCost window ``window_hours``).

    A hold is idle when the utilization DCGM or HAMi shows for it is under
    ``idle_threshold`` at ``now`` (the pools' idle holds stay idle all day); a HAMi container
    that has not touched CUDA is held, never idle. Raises ``ValueError`` for a
    ``core_weight`` outside [0, 1] or an unknown ``billing_share``.
    """
    if billing_share not in ("cores", "memory", "mix"):
        raise ValueError(f"billing_share must be cores, memory or mix, got {billing_share!r}")
    if not 0.0 <= core_weight <= 1.0:
        raise ValueError(f"core_weight must be within [0, 1], got {core_weight}")
    parts: dict[tuple[str, str], list[float]] = defaultdict(list)
    gpus: dict[tuple[str, str], list[float]] = defaultdict(list)
    used: dict[tuple[str, str], list[float]] = defaultdict(list)
    by_method: dict[tuple[str, str], list[float]] = defaultdict(list)
    by_tenant_method: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    idle: dict[str, list[float]] = defaultdict(list)
    devices: list[float] = []
    held: list[tuple[str, str]] = []
    idle_gpus: dict[tuple[str, str], list[float]] = defaultdict(list)
    idle_cost: dict[tuple[str, str], list[float]] = defaultdict(list)

    def pay(tenant: str, method: str, allocation: float, usage: float) -> None:
        parts[("allocation", tenant)].append(allocation)
        parts[("usage", tenant)].append(usage)
        by_method[("allocation", method)].append(allocation)
        by_method[("usage", method)].append(usage)
        by_tenant_method[("allocation", tenant, method)].append(allocation)
        by_tenant_method[("usage", tenant, method)].append(usage)

    if hami is not None:
        for d in hami.devices:
            price = d.model.usd_per_hour
            devices.append(price)
            paid: dict[str, list[float]] = defaultdict(list)
            for c in d.containers:
                share = billing_fraction(c, d, billing_share, core_weight)
                if c.touched_cuda:
                    use = hami.sm_percent(c, now) / 100.0
                    if use < idle_threshold:
                        idle_gpus[(c.tenant, d.model.name)].append(share)
                        idle_cost[(c.tenant, d.model.name)].append(price * share)
                else:
                    use = share  # held: pays its share until its first CUDA call
                    held.append((c.namespace, c.pod))
                pay(c.tenant, "hami", price * share, price * use)
                paid["allocation"].append(price * share)
                paid["usage"].append(price * use)
                gpus[(c.tenant, d.model.name)].append(share)
                used[(c.tenant, d.model.name)].append(use)
            for basis in SHARED_BASES:
                idle[basis].append(price - math.fsum(paid[basis]))

    if per_process is not None:
        wh = window_hours
        for node in per_process.nodes:
            for gpu in node.gpus:
                price = gpu.model.usd_per_hour
                devices.append(price)
                paid = defaultdict(list)
                units = [(gpu.uuid, i.gi_id) for i in gpu.mig] or [(gpu.uuid, "")]
                for unit in units:
                    holders = per_process.holders_of(unit)
                    if not holders:
                        continue
                    for h, share, method, figure in _unit_time_shares(
                        per_process, unit, holders, now
                    ):
                        # OpenCost's bill: request × price over the window, printed rounded.
                        billed = opencost_round(h.fraction * price * wh) / wh
                        if figure < idle_threshold:
                            idle_gpus[(h.tenant, gpu.model.name)].append(h.fraction)
                            idle_cost[(h.tenant, gpu.model.name)].append(billed)
                        pay(h.tenant, method, billed, price * share)
                        paid["allocation"].append(billed)
                        paid["usage"].append(price * share)
                        gpus[(h.tenant, gpu.model.name)].append(h.fraction)
                        used[(h.tenant, gpu.model.name)].append(share)
                for basis in SHARED_BASES:
                    idle[basis].append(price - math.fsum(paid[basis]))

    cost = {k: math.fsum(v) for k, v in sorted(parts.items())}
    return SharedKey(
        now=now,
        window_hours=window_hours,
        billing_share=billing_share,
        core_weight=core_weight,
        cost=cost,
        gpus=_by_tenant(gpus),
        used=_by_tenant(used),
        method_cost={k: math.fsum(v) for k, v in sorted(by_method.items())},
        idle={b: math.fsum(idle[b]) for b in SHARED_BASES},
        device_cost=math.fsum(devices),
        held=tuple(sorted(held)),
        tenants=tuple(sorted({t for _, t in cost})),
        gpus_by_model={k: math.fsum(v) for k, v in sorted(gpus.items())},
        used_by_model={k: math.fsum(v) for k, v in sorted(used.items())},
        tenant_method_cost={k: math.fsum(v) for k, v in sorted(by_tenant_method.items())},
        idle_gpus={k: math.fsum(v) for k, v in sorted(idle_gpus.items())},
        idle_gpu_cost={k: math.fsum(v) for k, v in sorted(idle_cost.items())},
    )


def _by_tenant(parts: Mapping[tuple[str, str], list[float]]) -> dict[str, float]:
    out: dict[str, list[float]] = defaultdict(list)
    for (tenant, _), values in parts.items():
        out[tenant].extend(values)
    return {t: math.fsum(v) for t, v in sorted(out.items())}


def _unit_time_shares(
    pool: PerProcessPool,
    unit: tuple[str, str],
    holders: tuple[SharedHolder, ...],
    now: float,
) -> list[tuple[SharedHolder, float, str, float]]:
    """Each holder's share of the physical GPU's time on ``unit``, the split's method, and
    the utilization DCGM shows for it (0–1: its own figure, or its instance's)."""
    if not unit[1]:
        # A whole GPU: every pod's own per-process figure, scaled down if over 100 %.
        figures = [pool.use(h, now) / 100.0 for h in holders]
        total = math.fsum(figures)
        scale = 1.0 / total if total > 1.0 else 1.0
        return [(h, f * scale, "per_process", f) for h, f in zip(holders, figures, strict=True)]
    gpu = pool.gpu(unit[0])
    part = pool.instance(*unit).slices / gpu.model.mig_slices
    activity = pool.unit_percent(unit, now) / 100.0  # the instance figure DCGM shows
    if len(holders) == 1:
        return [(holders[0], part * activity, "mig", activity)]
    requested = math.fsum(h.fraction for h in holders)
    return [(h, part * activity * h.fraction / requested, "even_split", activity) for h in holders]


__all__ = [
    "SHARED_BASES",
    "BillingShare",
    "SharedKey",
    "SharedMethod",
    "answer_key",
    "billing_fraction",
]
