"""Which tenant owns a pod: configured rules, first match wins.

Order: pod label keys, namespace label keys, the namespace → tenant map, namespace regexes.
No match → ``__unallocated__``. OpenCost reports label keys sanitized the Prometheus way
(``aifinops.io/tenant`` arrives as ``aifinops_io_tenant``; kube-state-metrics may also prefix
``label_``), so a configured key matches its raw form, its sanitized form and both with the
``label_`` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aifinops.model.inputs import EMPTY_LABELS
from aifinops.model.vocabulary import UNALLOCATED_TENANT

_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_label_key(key: str) -> str:
    """Prometheus' sanitization of a Kubernetes label key, as kube-state-metrics applies it."""
    return _INVALID_LABEL_CHARS.sub("_", key)


def _key_variants(key: str) -> tuple[str, ...]:
    sanitized = sanitize_label_key(key)
    variants = [key, sanitized, f"label_{sanitized}"]
    return tuple(dict.fromkeys(variants))


@dataclass(frozen=True, slots=True)
class TenantResolver:
    """Compiled tenancy rules; :meth:`resolve` is pure and cheap (results are cached by the
    caller per distinct input where it matters)."""

    pod_keys: tuple[tuple[str, ...], ...]
    namespace_keys: tuple[tuple[str, ...], ...]
    namespaces: Mapping[str, str]
    patterns: tuple[tuple[re.Pattern[str], str | None], ...]

    @classmethod
    def compile(
        cls,
        pod_label_keys: Iterable[str],
        namespace_label_keys: Iterable[str],
        namespaces: Mapping[str, str],
        namespace_patterns: Iterable[tuple[str, str | None]],
    ) -> TenantResolver:
        """The rules as configured (``TenancySettings.to_model`` calls this): label keys in
        every spelling OpenCost may report, regexes compiled."""
        return cls(
            pod_keys=tuple(_key_variants(k) for k in pod_label_keys),
            namespace_keys=tuple(_key_variants(k) for k in namespace_label_keys),
            namespaces=dict(namespaces),
            patterns=tuple((re.compile(rx), tenant) for rx, tenant in namespace_patterns),
        )

    def label_keys(self) -> tuple[frozenset[str], frozenset[str]]:
        """``(pod label keys, namespace label keys)`` that :meth:`resolve` may read, in every
        spelling it tries: the OpenCost source keeps only what some rule reads."""
        pod = frozenset(k for variants in self.pod_keys for k in variants)
        return pod, frozenset(k for variants in self.namespace_keys for k in variants)

    def cached(self) -> Callable[[str | None, Mapping[str, str], Mapping[str, str]], str]:
        """:meth:`resolve`, answering once per distinct (namespace, pod label map, namespace
        label map) for as long as the returned function is kept (one refresh's rows: the
        OpenCost sources hand equal maps as one object, so 20k pods are a few thousand
        keys). Keyed by the maps' identity; each entry holds its maps, so an id is never
        reused while it is cached. Maps are never changed once read (frozen rows)."""
        resolved: dict[tuple[str | None, int, int], tuple[object, object, str]] = {}
        seen = resolved.get
        resolve = self.resolve

        def cached_resolve(
            namespace: str | None,
            pod_labels: Mapping[str, str],
            namespace_labels: Mapping[str, str],
        ) -> str:
            key = (namespace, id(pod_labels), id(namespace_labels))
            entry = seen(key)
            if entry is None:
                tenant = resolve(namespace, pod_labels, namespace_labels)
                resolved[key] = (pod_labels, namespace_labels, tenant)
                return tenant
            return entry[2]

        return cached_resolve

    def resolve(
        self,
        namespace: str | None,
        pod_labels: Mapping[str, str],
        namespace_labels: Mapping[str, str],
    ) -> str:
        """The tenant for a pod; ``__unallocated__`` when no rule matches.

        Empty label values do not match (a label present but blank is treated as missing).
        """
        for variants in self.pod_keys:
            for key in variants:
                value = pod_labels.get(key)
                if value:
                    return value
        for variants in self.namespace_keys:
            for key in variants:
                value = namespace_labels.get(key)
                if value:
                    return value
        if namespace:
            mapped = self.namespaces.get(namespace)
            if mapped:
                return mapped
            for pattern, fixed in self.patterns:
                m = pattern.fullmatch(namespace)
                if m is None:
                    continue
                tenant = fixed if fixed is not None else m.group("tenant")
                if tenant:
                    return tenant
        return UNALLOCATED_TENANT


# --- OpenCost's month query aggregated by what tenancy reads ------------------------------

UNALLOCATED_PART = "__unallocated__"  # OpenCost's key part for a label the pods lack


@dataclass(frozen=True, slots=True)
class MonthAggregation:
    """How the month query aggregates, and how its row keys are read back.

    ``labels`` (OpenCost-sanitized label names) means
    ``aggregate=cluster,namespace,label:<l1>,...``: OpenCost
    (``AllocationProperties.GenerateKey``) names each row
    ``<cluster>/<namespace>/<value of l1>/...``, writing ``__unallocated__`` for a label the
    pods lack (versions before 2023 wrote ``<label>=<value>``; both are read). Pods with
    equal parts are summed into one row whose ``properties`` are the intersection of theirs
    (``AllocationProperties.Intersection``): cluster, namespace and, because all its pods
    share the namespace, ``namespaceLabels`` survive; pod labels do not (hence they are read
    from the key). The cluster is there because two clusters' namespaces of one name may
    carry different labels. Idle stays one ``__idle__`` row (not shared, not split).
    ``labels=None`` is the pod aggregation, ``namespace,pod``. ``reason`` says why this one
    was chosen (:func:`month_aggregation`).
    """

    labels: tuple[str, ...] | None
    reason: str

    @property
    def aggregate(self) -> str:
        """The ``aggregate`` query parameter."""
        if self.labels is None:
            return "namespace,pod"
        return ",".join(("cluster", "namespace", *(f"label:{name}" for name in self.labels)))

    def identity(self, key: str) -> tuple[str, str | None, Mapping[str, str]] | None:
        """``(name, namespace, labels)`` of an aggregated row, for tenancy; ``None`` for a
        row to keep as OpenCost named it (idle, a key of another shape, pod aggregation).

        Read from the right: namespaces and label values hold no ``/``, a cluster name may
        (an EKS ARN). The name is ``<cluster>/<namespace>{label=value,...}``: never
        ``…__unallocated__`` (that would book the row to ``__unallocated__`` whatever its
        namespace) nor ``…__idle__``. A part that is empty or ``__unallocated__`` is a label
        the pods lack (tenancy treats a blank value as missing too)."""
        names = self.labels
        if names is None or "__idle__" in key:
            return None
        parts = key.rsplit("/", len(names) + 1)
        if len(parts) != len(names) + 2:
            return None
        labels: dict[str, str] = {}
        for name, part in zip(names, parts[2:], strict=True):
            if part.startswith(name) and part[len(name) : len(name) + 1] == "=":
                part = part[len(name) + 1 :]
            if part and part != UNALLOCATED_PART:
                labels[name] = part
        shown = ",".join(f"{k}={v}" for k, v in labels.items())
        name = f"{parts[0]}/{parts[1]}{{{shown}}}"
        return name, parts[1] or None, labels or EMPTY_LABELS


def month_aggregation(
    pod_label_keys: Iterable[str] | None, *, pod: bool = False, share_split_even: bool = False
) -> MonthAggregation:
    """The month query's aggregation for tenancy rules with these pod label keys (``None``:
    no tenancy rules were given).

    Tenancy reads, per pod: its labels (the configured pod label keys, as OpenCost sanitizes
    them, also with the ``label_`` prefix), its namespace's labels and its namespace. So
    ``cluster,namespace`` plus ``label:<key>`` for each of those label names keeps every
    input of every rule, and each aggregated row resolves to the tenant each of its pods
    resolves to: the month-to-date per tenant is the pod aggregation's, with one row per
    (cluster, namespace, tenant labels) instead of one per pod. Idle is not shared, so the
    ``__idle__`` row does not depend on the aggregation either. (No tenancy rule reads a
    pod's name; one that did would need pods.)

    Pod aggregation instead, with the reason: when ``pod`` is asked for
    (``sources.opencost.month_aggregation: pod``); without tenancy rules; and with
    ``share_split_even`` (``shareSplit=even`` in the extra ``params``: shared costs are then
    split evenly per row, so the rows asked for change the split).
    """
    if pod:
        return MonthAggregation(None, "sources.opencost.month_aggregation is pod")
    if pod_label_keys is None:
        return MonthAggregation(None, "no tenancy rules were given to the month query")
    if share_split_even:
        return MonthAggregation(
            None, "params.shareSplit=even splits shared costs per row: pod rows keep it exact"
        )
    names: list[str] = []
    for key in pod_label_keys:
        sanitized = sanitize_label_key(key)
        names += [sanitized, f"label_{sanitized}"]
    labels = tuple(dict.fromkeys(names))
    return MonthAggregation(
        labels, "cluster, namespace and the tenancy pod label keys keep tenancy exact"
    )
