"""Alertmanager under prometheus-operator: alertmanager/operator/alertmanagerconfig.yaml checked
against the AlertmanagerConfig CRD's schema (tests/fixtures, operator 0.93), and a real
Alertmanager (0.25) started on the files laid out as the operator mounts them, proving a
notification renders with the AI FinOps templates.

What the operator does, from its source (pkg/alertmanager/statefulset.go, operator.go,
amcfg.go at 6adcebc5): the configuration Secret's keys other than alertmanager.yaml are copied
into the generated Secret mounted at /etc/alertmanager/config/; Alertmanager reads
/etc/alertmanager/config_out/alertmanager.env.yaml (the config reloader's output), so a
relative path resolves there; each spec.secrets Secret is mounted at
/etc/alertmanager/secrets/<name>/. An AlertmanagerConfig is merged in: its receivers are
renamed <namespace>/<name>/<receiver>, its route gets `continue: true` and (strategy
OnNamespace, the default) a namespace="<its namespace>" matcher and goes first; its inhibit
rules get the same matcher on both sides; secret references are read and written inline.

The test lays that tree under a temporary folder: the only change to the files is the mount
root (/etc/alertmanager -> the folder), plus local values (the sink's URLs, 1s group timings).
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devtools.devstack import Processes, RecordingSink, http_get, run_alertmanager, wait_until
from tests.tools import require_binary

ROOT = Path(__file__).resolve().parents[2]
AMC = ROOT / "alertmanager" / "operator" / "alertmanagerconfig.yaml"
PLAIN = ROOT / "alertmanager" / "alertmanager.yml"
TEMPLATES = ROOT / "alertmanager" / "templates"
SECRET_EXAMPLE = ROOT / "deploy/kubernetes/examples/alertmanager-config-secret.example.yaml"
SCHEMA = ROOT / "tests/fixtures/prometheus_operator_alertmanagerconfig_v1alpha1_schema.json"
MOUNT_ROOT = "/etc/alertmanager"
ALERT = "AIFinOpsBudgetUsageHigh"


# --- structure: the CRD's schema ------------------------------------------------------------


def _closed(node: Any) -> Any:
    """The CRD schema as JSON Schema with unknown fields refused (the API server prunes or,
    with strict field validation, rejects them)."""
    if isinstance(node, list):
        return [_closed(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA.read_text())
    return data


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Every schema violation of ``doc``; child routes (kept as raw JSON by the CRD) are
    checked against the route schema, as the operator decodes them (DisallowUnknownFields)."""
    meta = crd()
    schema = _closed(meta["openAPIV3Schema"])
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]
    if doc.get("apiVersion") != f"{meta['group']}/{meta['version']}":
        errors.append(f"apiVersion {doc.get('apiVersion')}")
    if doc.get("kind") != meta["kind"]:
        errors.append(f"kind {doc.get('kind')}")
    route_schema = schema["properties"]["spec"]["properties"]["route"]

    def children(route: dict[str, Any], path: str) -> None:
        for i, child in enumerate(route.get("routes") or []):
            where = f"{path}/routes/{i}"
            errors.extend(
                f"{where}/{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in jsonschema.Draft7Validator(route_schema).iter_errors(child)
            )
            children(child, where)

    children(doc.get("spec", {}).get("route") or {}, "spec/route")
    return errors


def amc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(AMC.read_text())
    return doc


def test_alertmanagerconfig_matches_the_crd_schema() -> None:
    assert schema_errors(amc()) == []


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["spec"]["route"].update(groupby=["x"]), "groupby"),
        (lambda d: d["spec"]["route"]["routes"][0].update(recevier="x"), "recevier"),
        (lambda d: d["spec"]["route"].update(groupWait="30 s"), "does not match"),
        (lambda d: d["spec"]["receivers"][1]["slackConfigs"][0].update(apiURL="https://x"),
         "not of type 'object'"),
        (lambda d: d["spec"]["inhibitRules"][0]["sourceMatch"][0].update(matchType="=="),
         "is not one of"),
    ],
)  # fmt: skip
def test_the_schema_check_can_fail(mutate: Any, needle: str) -> None:
    doc = amc()
    mutate(doc)
    assert any(needle in e for e in schema_errors(doc)), schema_errors(doc)


def test_secrets_come_from_kubernetes_secrets_only() -> None:
    refs: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in {"apiURL", "routingKey", "authPassword", "credentials", "urlSecret"}:
                    assert isinstance(value, dict), f"{key} must reference a Secret"
                    refs.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(amc()["spec"])
    assert {r["name"] for r in refs} == {"aifinops-alertmanager"}
    assert {r["key"] for r in refs} == {
        "slack_api_url",
        "pagerduty_routing_key",
        "smtp_password",
        "webhook_token",
    }


# --- what the operator generates ---------------------------------------------------------------


def _matcher(m: dict[str, Any]) -> str:
    # monitoringv1alpha1.Matcher.String(): name, match type, the value in double quotes
    return f'{m["name"]}{m.get("matchType") or "="}"{m.get("value", "")}"'


def _route(r: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {"receiver": prefix + r["receiver"]}
    for src, dst in (
        ("groupBy", "group_by"),
        ("groupWait", "group_wait"),
        ("groupInterval", "group_interval"),
        ("repeatInterval", "repeat_interval"),
        ("continue", "continue"),
    ):
        if src in r:
            out[dst] = r[src]
    if r.get("matchers"):
        out["matchers"] = [_matcher(m) for m in r["matchers"]]
    if r.get("routes"):
        out["routes"] = [_route(c, prefix) for c in r["routes"]]
    return out


def _pairs(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {i["key"]: i["value"] for i in items or []}


def _receiver(r: dict[str, Any], prefix: str, secret: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": prefix + r["name"]}
    for c in r.get("slackConfigs", []):
        keys = ("channel", "color", "title", "text")
        conf = {k: c[k] for k in keys if k in c}
        conf.update(api_url=secret(c["apiURL"]), send_resolved=c.get("sendResolved", False))
        conf["title_link"] = c["titleLink"]
        out.setdefault("slack_configs", []).append(conf)
    for c in r.get("pagerdutyConfigs", []):
        conf = {k: c[k] for k in ("severity", "description", "url") if k in c}
        conf.update(routing_key=secret(c["routingKey"]), send_resolved=c.get("sendResolved"))
        conf["details"] = _pairs(c.get("details"))
        # the CRD calls the link text `alt`; the operator writes it as `text`
        links = c.get("pagerDutyLinkConfigs", [])
        conf["links"] = [{"href": link["href"], "text": link["alt"]} for link in links]
        out.setdefault("pagerduty_configs", []).append(conf)
    for c in r.get("emailConfigs", []):
        conf = {k: c[k] for k in ("to", "from", "smarthost", "text") if k in c}
        conf.update(
            auth_username=c["authUsername"],
            auth_password=secret(c["authPassword"]),
            require_tls=c["requireTLS"],
            send_resolved=c.get("sendResolved"),
            headers=_pairs(c.get("headers")),
        )
        out.setdefault("email_configs", []).append(conf)
    for c in r.get("webhookConfigs", []):
        auth = c["httpConfig"]["authorization"]
        conf = {
            "url": c["url"],
            "send_resolved": c.get("sendResolved"),
            "http_config": {
                "authorization": {"type": auth["type"], "credentials": secret(auth["credentials"])}
            },
        }
        out.setdefault("webhook_configs", []).append(conf)
    return out


def operator_merge(
    base: dict[str, Any], resource: dict[str, Any], secrets: dict[tuple[str, str], str]
) -> dict[str, Any]:
    """``base`` with ``resource`` merged as the operator's ConfigBuilder does it (strategy
    OnNamespace; the subset of fields this repository's resource uses)."""
    config = copy.deepcopy(base)
    ns, name = resource["metadata"]["namespace"], resource["metadata"]["name"]
    prefix = f"{ns}/{name}/"
    own = f'namespace="{ns}"'

    def secret(ref: dict[str, str]) -> str:
        return secrets[(ref["name"], ref["key"])]

    spec = resource["spec"]
    for rule in spec.get("inhibitRules", []):
        config.setdefault("inhibit_rules", []).append(
            {
                "source_matchers": [*map(_matcher, rule["sourceMatch"]), own],
                "target_matchers": [*map(_matcher, rule["targetMatch"]), own],
                "equal": rule["equal"],
            }
        )
    route = _route(spec["route"], prefix)
    route["matchers"] = [*route.get("matchers", []), own]
    route["continue"] = True
    config["route"]["routes"] = [route, *config["route"].get("routes", [])]
    config["receivers"] = [
        *config.get("receivers", []),
        *(_receiver(r, prefix, secret) for r in spec["receivers"]),
    ]
    return config


def test_the_resource_routes_as_the_plain_configuration() -> None:
    """Same receivers, sub-routes and inhibition as alertmanager/alertmanager.yml."""
    plain = yaml.safe_load(PLAIN.read_text())
    merged = operator_merge(
        {"route": {"receiver": "x"}, "receivers": [{"name": "x"}]},
        amc(),
        {k: "s" for k in _secret_keys()},
    )
    ours = merged["route"]["routes"][0]
    strip = re.compile(r"^monitoring/aifinops/")
    assert [strip.sub("", r["name"]) for r in merged["receivers"][1:]] == [
        r["name"] for r in plain["receivers"]
    ]
    for sub, want in zip(ours["routes"], plain["route"]["routes"], strict=True):
        assert strip.sub("", sub["receiver"]) == want["receiver"]
        assert sub["matchers"] == want["matchers"]
        assert sub.get("continue", False) == want.get("continue", False)
    assert ours["group_by"] == plain["route"]["group_by"]
    ns = 'namespace="monitoring"'
    assert [
        {**r, "source_matchers": r["source_matchers"][:-1], "target_matchers":
            r["target_matchers"][:-1]} for r in merged["inhibit_rules"]
    ] == plain["inhibit_rules"]  # fmt: skip
    assert all(ns in r["source_matchers"] for r in merged["inhibit_rules"])


def _secret_keys() -> list[tuple[str, str]]:
    keys = ("slack_api_url", "pagerduty_routing_key", "smtp_password", "webhook_token")
    return [("aifinops-alertmanager", k) for k in keys]


# --- a real Alertmanager on the operator's layout -----------------------------------------


def rebase(text: str, root: Path) -> str:
    """The one change to what the operator writes: its mount root, moved into ``root``."""
    return text.replace(f"{MOUNT_ROOT}/", f"{root}{MOUNT_ROOT}/")


def lay_out(
    root: Path, config: dict[str, Any], config_keys: dict[str, str], secret_files: dict[str, str]
) -> Path:
    """The operator's volumes under ``root``: the generated Secret in config/ (the compressed
    configuration and the configuration Secret's other keys), the reloader's output in
    config_out/, spec.secrets in secrets/<name>/. Returns the --config.file path."""
    base = root / MOUNT_ROOT.lstrip("/")
    text = rebase(yaml.safe_dump(config, sort_keys=False), root)
    (base / "config").mkdir(parents=True)
    (base / "config" / "alertmanager.yaml.gz").write_bytes(gzip.compress(text.encode()))
    for key, value in config_keys.items():
        (base / "config" / key).write_text(value)
    for rel, value in secret_files.items():
        path = base / "secrets" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    (base / "config_out").mkdir()
    out = base / "config_out" / "alertmanager.env.yaml"
    out.write_text(text)
    return out


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    with RecordingSink() as s:
        yield s


def start(procs: Processes, workdir: Path, config_file: Path) -> str:
    binary = require_binary("prometheus-alertmanager")
    return run_alertmanager(procs, workdir, config_file, binary=binary).url


def fire(url: str, labels: dict[str, str]) -> None:
    alert = {
        "labels": {"alertname": ALERT, "severity": "critical", **labels},
        "annotations": {
            "summary": "Tenant budget nearly spent",
            "description": "Tenant acme has used 95% of its budget.",
            "runbook_url": "https://runbooks.example/aifinops#aifinopsbudgetusagehigh",
        },
    }
    req = urllib.request.Request(
        f"{url}/api/v2/alerts",
        data=json.dumps([alert]).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def check_rendered(sink: RecordingSink, url: str) -> None:
    title = f"[FIRING:1] {ALERT} · acme · eu"
    slack = sink.wait_for(
        "/slack",
        lambda b: b["attachments"][0]["title"] == title,
        15.0,
        "a Slack message with the rendered title",
    )
    attachment = slack.body["attachments"][0]
    assert slack.body["channel"] == "#aifinops-alerts"
    assert attachment["color"] == "danger"
    assert attachment["title_link"].endswith("#aifinopsbudgetusagehigh")
    assert "[critical] Tenant acme has used 95%" in attachment["text"]
    page = sink.wait_for(
        "/pagerduty",
        lambda b: b["payload"]["summary"].startswith(title),
        15.0,
        "a PagerDuty event with the rendered title",
    )
    assert page.body["routing_key"] == "operator-routing-key"
    assert page.body["payload"]["severity"] == "critical"
    # no notification failed: "template ... not defined" is what a misplaced template gives
    metrics = http_get(f"{url}/metrics").decode()
    failed = re.findall(r"^alertmanager_notifications_failed_total\{[^}]*\} (\S+)", metrics, re.M)
    assert failed and all(float(v) == 0 for v in failed), failed


def test_resource_merged_into_a_configuration_renders_with_the_templates(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """An existing configuration (the user's Secret) with the AI FinOps template added as one
    of its keys, plus the AlertmanagerConfig merged by the operator."""
    user_config = {
        "route": {"receiver": "default", "group_by": ["alertname"]},
        "receivers": [{"name": "default"}],
        # where the operator serves the configuration Secret's keys
        "templates": [f"{MOUNT_ROOT}/config/*.tmpl"],
    }
    secrets = {
        ("aifinops-alertmanager", "slack_api_url"): f"{sink.url}/slack",
        ("aifinops-alertmanager", "pagerduty_routing_key"): "operator-routing-key",
        ("aifinops-alertmanager", "smtp_password"): "unused",
        ("aifinops-alertmanager", "webhook_token"): "unused",
    }
    config = operator_merge(user_config, amc(), secrets)
    ours = config["route"]["routes"][0]
    ours.update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for pd in receiver.get("pagerduty_configs", []):
            pd["url"] = f"{sink.url}/pagerduty"
    keys = {p.name: p.read_text() for p in TEMPLATES.glob("*.tmpl")}
    config_file = lay_out(tmp_path, config, keys, {})
    with Processes() as procs:
        url = start(procs, tmp_path, config_file)
        # OnNamespace: the resource's routes take alerts of its own namespace
        fire(url, {"tenant": "acme", "cluster": "eu", "namespace": "monitoring"})
        check_rendered(sink, url)


def test_configuration_secret_example_renders_under_the_operator(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """deploy/kubernetes/examples/alertmanager-config-secret.example.yaml as the whole
    configuration (spec.configSecret), with spec.secrets: [aifinops-alertmanager]."""
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    data: dict[str, str] = dict(secret["stringData"])
    config = yaml.safe_load(data.pop("alertmanager.yaml"))
    assert data, "the templates travel in the Secret"
    config["global"]["pagerduty_url"] = f"{sink.url}/pagerduty"
    config["route"].update(group_wait="1s", group_interval="1s")
    secret_files = {
        "aifinops-alertmanager/slack_api_url": f"{sink.url}/slack",
        "aifinops-alertmanager/pagerduty_routing_key": "operator-routing-key",
    }
    config_file = lay_out(tmp_path, config, data, secret_files)
    # nothing is left relative to config_out/, where only the configuration is
    text = config_file.read_text()
    assert "templates/" not in text and " secrets/" not in text
    with Processes() as procs:
        url = start(procs, tmp_path, config_file)
        fire(url, {"tenant": "acme", "cluster": "eu"})
        check_rendered(sink, url)


def test_relative_paths_fail_under_the_operator(tmp_path: Path, sink: RecordingSink) -> None:
    """Why the paths are absolute: alertmanager/alertmanager.yml as it is (relative paths),
    laid out the same way, checks clean but fails every notification."""
    config = yaml.safe_load(PLAIN.read_text())
    config["global"]["pagerduty_url"] = f"{sink.url}/pagerduty"
    config["global"]["slack_api_url"] = f"{sink.url}/slack"
    del config["global"]["slack_api_url_file"]
    config["route"].update(group_wait="1s", group_interval="1s")
    keys = {p.name: p.read_text() for p in TEMPLATES.glob("*.tmpl")}
    config_file = lay_out(tmp_path, config, keys, {})
    with Processes() as procs:
        url = start(procs, tmp_path, config_file)
        fire(url, {"tenant": "acme", "cluster": "eu"})

        def failed() -> bool:
            metrics = http_get(f"{url}/metrics").decode()
            return bool(
                re.search(
                    r'^alertmanager_notifications_failed_total\{[^}]*integration="slack"[^}]*\} '
                    r"[1-9]",
                    metrics,
                    re.M,
                )
            )

        wait_until(failed, 15.0, "a failed Slack notification")
    assert (
        'template \\"aifinops.title\\" not defined' in (tmp_path / "alertmanager.log").read_text()
    )
    assert sink.received("/slack") == []
