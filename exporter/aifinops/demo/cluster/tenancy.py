"""Who owns what: the namespaces each tenant's pods live in, the tenancy rule kind that names
each tenant, the precedence cases, and the exporter's ``tenancy:`` section that resolves them.

The rules are applied to labels as OpenCost reports them (keys sanitized, node then namespace
then pod labels merged), first match wins: pod label keys, namespace label keys, the namespace
map, the ``team-<tenant>`` pattern. No random stream is drawn here.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from aifinops.demo.cluster.spec import (
    PLATFORM_TENANT,
    RULE_KINDS,
    SYSTEM_NAMESPACES,
    TEAM_LABEL,
    TENANT_LABEL,
    TENANT_PATTERN,
    UNALLOCATED_TENANT,
    UNMATCHED_NAMESPACES,
    ClusterSpec,
    RuleKind,
)


def sanitize_label_key(key: str) -> str:
    """Prometheus' label-name sanitization as OpenCost applies it to Kubernetes label keys."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


class Tenancy:
    """The tenancy of a :class:`ClusterSpec`: namespaces (with their raw labels), the namespace
    map, and which rule kind names each tenant (``spec.tenant_rules`` cycled over tenants)."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.tenant_rule: dict[str, RuleKind] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.namespace_map: dict[str, str] = {}
        if len(spec.tenants) < len(RULE_KINDS):
            raise ValueError("a cluster needs at least 4 tenants (one per tenancy rule kind)")
        kinds = spec.tenant_rules or RULE_KINDS
        by_kind: dict[RuleKind, list[str]] = defaultdict(list)
        for i, tenant in enumerate(spec.tenants):
            kind = kinds[i % len(kinds)]
            self.tenant_rule[tenant] = kind
            by_kind[kind].append(tenant)
        self.tenant_namespace: dict[str, str] = {}
        for kind, tenants in by_kind.items():
            for j, tenant in enumerate(tenants):
                if kind == "pod_label":
                    ns = "llm-serving" if j < 25 else f"llm-serving-{j // 25}"
                    labels: dict[str, str] = {}
                elif kind == "namespace_label":
                    ns = f"{tenant}-prod"
                    labels = {TEAM_LABEL: tenant}
                elif kind == "namespace_map":
                    ns = f"ml-{tenant}"
                    labels = {}
                    self.namespace_map[ns] = tenant
                else:
                    ns = f"team-{tenant}"
                    labels = {}
                self.tenant_namespace[tenant] = ns
                self.namespaces.setdefault(ns, {"kubernetes.io/metadata.name": ns}).update(labels)
        for ns in SYSTEM_NAMESPACES:
            self.namespaces[ns] = {"kubernetes.io/metadata.name": ns}
            self.namespace_map[ns] = PLATFORM_TENANT
        for ns in UNMATCHED_NAMESPACES:
            self.namespaces[ns] = {"kubernetes.io/metadata.name": ns}
        # Precedence cases: a pod label beats a namespace pattern; a namespace label beats one.
        self.pod_label_in_pattern_ns: tuple[str, str] | None = None
        self.labelled_pattern_ns: tuple[str, str] | None = None
        self.decoy_team_ns: str | None = None
        if spec.precedence_cases:
            pod_label = by_kind.get("pod_label", [])
            ns_label = by_kind.get("namespace_label", [])
            pattern = by_kind.get("namespace_pattern", [])
            if pod_label and pattern:
                self.pod_label_in_pattern_ns = (self.tenant_namespace[pattern[0]], pod_label[-1])
            if ns_label and "recsys" not in spec.tenants:
                self.namespaces["team-recsys"] = {
                    "kubernetes.io/metadata.name": "team-recsys",
                    TEAM_LABEL: ns_label[-1],
                }
                self.labelled_pattern_ns = ("team-recsys", ns_label[-1])
            if len(pattern) > 1:
                self.decoy_team_ns = self.tenant_namespace[pattern[1]]
        if spec.odd_tenant is not None:
            self.namespaces["legal"] = {"kubernetes.io/metadata.name": "legal"}
            self.namespace_map["legal"] = spec.odd_tenant

    def placement(self, tenant: str, rng: random.Random) -> tuple[str, dict[str, str]]:
        """Namespace and tenant-carrying pod labels for a pod of ``tenant`` ("" = unmatched)."""
        if not tenant:
            return rng.choice(UNMATCHED_NAMESPACES), {}
        ns = self.tenant_namespace[tenant]
        if self.tenant_rule[tenant] == "pod_label":
            return ns, {TENANT_LABEL: tenant}
        if (
            self.labelled_pattern_ns is not None
            and tenant == self.labelled_pattern_ns[1]
            and rng.random() < 0.3
        ):
            return self.labelled_pattern_ns[0], {}
        return ns, {}

    def config(self) -> dict[str, Any]:
        """The exporter's ``tenancy:`` section (keys as ``settings.TenancySettings``) that names
        this cluster's tenants: pod label ``aifinops.io/tenant``, namespace label ``team``, the
        namespace map, and the ``team-<tenant>`` namespace pattern."""
        return {
            "pod_label_keys": [TENANT_LABEL],
            "namespace_label_keys": [TEAM_LABEL],
            "namespaces": dict(sorted(self.namespace_map.items())),
            "namespace_patterns": [{"regex": TENANT_PATTERN}],
        }

    def resolve(
        self, namespace: str, labels: Mapping[str, str], ns_labels: Mapping[str, str]
    ) -> str:
        """The tenant the configured rules give a pod of ``namespace`` whose labels OpenCost
        reports as ``labels`` / ``ns_labels`` (first match wins)."""
        tenant = UNALLOCATED_TENANT
        value = labels.get(sanitize_label_key(TENANT_LABEL))
        if value:
            tenant = value
        elif ns_labels.get(TEAM_LABEL):
            tenant = ns_labels[TEAM_LABEL]
        elif self.namespace_map.get(namespace):
            tenant = self.namespace_map[namespace]
        else:
            m = re.fullmatch(TENANT_PATTERN, namespace)
            if m and m.group("tenant"):
                tenant = m.group("tenant")
        return tenant

    def rule(self, namespace: str, labels: Mapping[str, str], ns_labels: Mapping[str, str]) -> str:
        """Which rule kind decides such a pod's tenant (``"none"`` when nothing matches)."""
        if labels.get(sanitize_label_key(TENANT_LABEL)):
            return "pod_label"
        if ns_labels.get(TEAM_LABEL):
            return "namespace_label"
        if self.namespace_map.get(namespace):
            return "namespace_map"
        if re.fullmatch(TENANT_PATTERN, namespace):
            return "namespace_pattern"
        return "none"
