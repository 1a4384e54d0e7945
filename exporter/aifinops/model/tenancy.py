"""Which tenant owns a pod: configured rules, first match wins.

Order: pod label keys, namespace label keys, the namespace → tenant map, namespace regexes.
No match → ``__unallocated__``. OpenCost reports label keys sanitized the Prometheus way
(``aifinops.io/tenant`` arrives as ``aifinops_io_tenant``; kube-state-metrics may also prefix
``label_``), so a configured key matches its raw form, its sanitized form and both with the
``label_`` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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
