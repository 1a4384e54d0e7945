"""The shared-GPU pools a cluster adds with ``ClusterSpec(shared_gpus=True)``: one HAMi node
(demo/hami.py) and the per-process nodes (demo/perprocess.py), with their own tenants.

The cluster takes their nodes and pods into its layout (so OpenCost bills them and its idle
row counts their GPUs), leaves their DCGM series to :meth:`SharedPools.dcgm_rows`, serves the
HAMi pages from its fake upstreams, and takes their part of the answer key from
demo/shared_key.py. Their tenants hold no other GPU, so the key's per-tenant GPU figures are
the whole answer for them. Nodes are drawn from a stream of their own (the pool's seed) and
appended last: every other byte the cluster renders stays as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aifinops.demo.cluster.records import MigInstance, SimGpu, SimNode, SimPod
from aifinops.demo.hami import HamiPool
from aifinops.demo.perprocess import PerProcessPool
from aifinops.demo.shared_key import BillingShare, SharedKey, answer_key

# The dcgm-exporter generation the shared nodes speak: the per-process fields are defined on
# the legacy names (dcgm-exporter's isPerProcessMetric), the last tag read being 4.5.3-4.8.2.
SHARED_DCGM_GENERATION = "4.8"

DcgmRow = tuple[str, tuple[tuple[str, str], ...], str]  # family, labels in page order, value


@dataclass(frozen=True, slots=True)
class SharedPools:
    """The HAMi pool and the per-process pool of one cluster."""

    hami: HamiPool
    per_process: PerProcessPool

    @classmethod
    def build(cls, seed: int) -> SharedPools:
        return cls(HamiPool.build(seed), PerProcessPool.build(seed))

    @property
    def nodes(self) -> tuple[SimNode, ...]:
        return self.hami.nodes + self.per_process.nodes

    @property
    def pods(self) -> tuple[SimPod, ...]:
        return self.hami.pods + self.per_process.pods

    @property
    def node_names(self) -> frozenset[str]:
        return frozenset(n.name for n in self.nodes)

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(
            sorted(
                {c.tenant for c in self.hami.containers}
                | {h.tenant for h in self.per_process.holders}
            )
        )

    def dcgm_rows(self, now: float, driver_version: str, node: str | None = None) -> list[DcgmRow]:
        """Every DCGM series of the shared GPUs (or of one ``node``'s) at ``now``, with its
        labels in dcgm-exporter's order (≤ 4.8 names: ``Hostname``, ``DCGM_FI_DRIVER_VERSION``)."""
        rows: list[DcgmRow] = []
        for gpu, family, value in self.hami.dcgm_series(now):
            if node is None or gpu.node == node:
                rows.append((family, _labels(gpu, None, driver_version, {}), value))
        for gpu, inst, family, attrs, value in self.per_process.dcgm_series(now):
            if node is None or gpu.node == node:
                rows.append((family, _labels(gpu, inst, driver_version, attrs), value))
        return rows

    def key(
        self,
        now: float,
        window_hours: float = 1.0,
        *,
        billing_share: BillingShare = "cores",
        core_weight: float = 0.5,
        idle_threshold: float = 0.05,
    ) -> SharedKey:
        """The shared GPUs' answer key (demo/shared_key.py)."""
        return answer_key(
            now,
            hami=self.hami,
            per_process=self.per_process,
            window_hours=window_hours,
            billing_share=billing_share,
            core_weight=core_weight,
            idle_threshold=idle_threshold,
        )


def _labels(
    gpu: SimGpu, inst: MigInstance | None, driver: str, attrs: dict[str, str]
) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = [
        ("gpu", str(gpu.index)),
        ("UUID", gpu.uuid),
        ("pci_bus_id", gpu.pci_bus_id),
        ("device", f"nvidia{gpu.index}"),
        ("modelName", gpu.model.name),
    ]
    if inst is not None:
        pairs += [("GPU_I_PROFILE", inst.profile), ("GPU_I_ID", inst.gi_id)]
    pairs += [("Hostname", gpu.node), ("DCGM_FI_DRIVER_VERSION", driver)]
    pairs += sorted(attrs.items())  # a Go template ranges over the attribute map in key order
    return tuple(pairs)


def label_text(pairs: Sequence[tuple[str, str]]) -> str:
    """``k="v",...`` as dcgm-exporter writes it (values escaped)."""
    return ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in pairs
    )


__all__ = ["SHARED_DCGM_GENERATION", "DcgmRow", "SharedPools", "label_text"]
