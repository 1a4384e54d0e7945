import pytest

from aifinops.model.tenancy import sanitize_label_key
from tests.model.builders import resolver


@pytest.mark.parametrize(
    ("namespace", "labels", "ns_labels", "expected"),
    [
        ("x", {"aifinops.io/tenant": "raw"}, {}, "raw"),
        ("x", {"aifinops_io_tenant": "sanitized"}, {}, "sanitized"),
        ("x", {"label_aifinops_io_tenant": "ksm"}, {}, "ksm"),
        ("x", {"aifinops_io_tenant": ""}, {"team": "nsl"}, "nsl"),  # empty value is no match
        ("ml-research", {}, {}, "research"),
        ("team-blue", {}, {}, "blue"),
        ("team-Blue", {}, {}, "__unallocated__"),  # regex must match the whole name
        ("default", {}, {}, "__unallocated__"),
        (None, {}, {}, "__unallocated__"),
        ("ml-research", {"aifinops_io_tenant": "pod-wins"}, {"team": "x"}, "pod-wins"),
        ("team-blue", {}, {"team": "ns-label-wins"}, "ns-label-wins"),
    ],
)
def test_first_matching_rule_wins(namespace, labels, ns_labels, expected):
    assert resolver().resolve(namespace, labels, ns_labels) == expected


def test_sanitize_label_key_follows_prometheus_rules():
    assert sanitize_label_key("aifinops.io/tenant") == "aifinops_io_tenant"
    assert sanitize_label_key("app.kubernetes.io/part-of") == "app_kubernetes_io_part_of"
