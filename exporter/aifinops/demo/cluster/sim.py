"""The simulated cluster as the demo, the tests and the benchmark use it: the layout plus one
method per upstream answer, each delegating to its format's renderer module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aifinops.demo.cluster import dcgm, opencost, prometheus, truth
from aifinops.demo.cluster.layout import Layout
from aifinops.demo.cluster.truth import GroundTruth

if TYPE_CHECKING:
    from aifinops.demo.shared_key import BillingShare


class SimCluster(Layout):
    """A deterministic simulated cluster (see :mod:`aifinops.demo.cluster`).

    The layout is built once from ``spec``; every answer is a pure function of it, of ``now``
    and of :meth:`~Layout.scale_tenant`'s multipliers.
    """

    # --- dcgm-exporter ------------------------------------------------------------------------

    def dcgm_exposition(self, now: float, *, node: str | None = None) -> str:
        """dcgm-exporter ``/metrics`` text at ``now`` (see :func:`dcgm.exposition`)."""
        return dcgm.exposition(self, now, node=node)

    def dcgm_pages(self, now: float) -> dict[str, str]:
        """One dcgm-exporter page per GPU node, keyed by node name."""
        return dcgm.pages(self, now)

    # --- Prometheus ---------------------------------------------------------------------------

    def prometheus_series(self, now: float, metric: str) -> list[tuple[dict[str, str], str]]:
        """Every series of a DCGM family as Prometheus stores it (see :func:`prometheus.series`)."""
        return prometheus.series(self, now, (metric,))

    def prometheus_vector(self, now: float, promql: str) -> dict[str, Any]:
        """The Prometheus HTTP API JSON for an instant query at ``now`` (see
        :func:`prometheus.vector`)."""
        return prometheus.vector(self, now, promql)

    # --- OpenCost -----------------------------------------------------------------------------

    def opencost_allocation(
        self,
        now: float,
        window_hours: float = 1.0,
        *,
        aggregate: str = "namespace,pod",
        include_idle: bool = True,
    ) -> dict[str, Any]:
        """OpenCost ``/allocation/compute`` JSON over ``[now − window_hours, now]`` (see
        :func:`opencost.allocation`)."""
        return opencost.allocation(
            self, now, window_hours, aggregate=aggregate, include_idle=include_idle
        )

    # --- answer key ---------------------------------------------------------------------------

    def ground_truth(
        self,
        now: float,
        window_hours: float = 1.0,
        *,
        metric: str = "auto",
        idle_threshold: float = 0.05,
        billing_share: BillingShare = "cores",
        core_weight: float = 0.5,
    ) -> GroundTruth:
        """The answer key at ``now`` (see :func:`truth.ground_truth`)."""
        return truth.ground_truth(
            self,
            now,
            window_hours,
            metric=metric,
            idle_threshold=idle_threshold,
            billing_share=billing_share,
            core_weight=core_weight,
        )

    def summary(self, now: float, window_hours: float = 1.0) -> dict[str, Any]:
        """A human-readable shape of the cluster at ``now`` (for docs, logs and the report)."""
        return truth.summary(self, now, window_hours)
