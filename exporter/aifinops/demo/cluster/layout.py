"""Building a cluster from its :class:`ClusterSpec`: nodes and GPUs (MIG layouts, time-slice
replicas), GPU pods on them, system and CPU-only pods, and the tenancy that names their owners.

:class:`Layout` is everything about the cluster that does not depend on ``now`` except which
run of a scheduled pod is in progress. The layout is drawn from ``random.Random(seed)`` in a
fixed order (main pools' nodes, GPU pods, system pods, CPU pods, then each ``own_rng`` pool
from its own stream); reordering a draw changes every byte the simulator renders.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aifinops.demo.cluster.hashing import hash_suffix, hash_unit
from aifinops.demo.cluster.power import EnergySim
from aifinops.demo.cluster.records import (
    GpuHold,
    MigInstance,
    PodRun,
    Schedule,
    SimGpu,
    SimNode,
    SimPod,
    UnitKey,
    mig_instances,
)
from aifinops.demo.cluster.spec import (
    FAULT_TOLERANT_LABEL,
    GIB,
    GPU_MODELS,
    MIB,
    MIG_LAYOUTS,
    PLATFORM_TENANT,
    SERVING_NAMESPACE,
    TEAM_LABEL,
    TENANT_LABEL,
    ClusterSpec,
    NodePoolSpec,
    RuleKind,
)
from aifinops.demo.cluster.tenancy import Tenancy, sanitize_label_key

if TYPE_CHECKING:
    from aifinops.demo.shared_pools import SharedPools


class Layout:
    """A built cluster: ``nodes``, ``pods`` and ``tenancy``, and the queries on them that do
    not render an upstream format (tenants, runs of scheduled pods, dcgm-exporter generation).

    The only mutable state is :meth:`scale_tenant`'s per-tenant cost multipliers.
    """

    def __init__(self, spec: ClusterSpec | None = None) -> None:
        self.spec: ClusterSpec = spec if spec is not None else ClusterSpec.demo()
        self._scale: dict[str, float] = {}
        self.tenancy = Tenancy(self.spec)
        self.tenant_rule: dict[str, RuleKind] = self.tenancy.tenant_rule
        self.namespaces: dict[str, dict[str, str]] = self.tenancy.namespaces
        self.namespace_map: dict[str, str] = self.tenancy.namespace_map
        rng = random.Random(self.spec.seed)
        self._gpu_used_cpu: dict[str, float] = {}  # cores GPU pods request, per node
        self._gpu_used_ram: dict[str, float] = {}  # bytes GPU pods request, per node
        main = tuple(p for p in self.spec.pools if not p.own_rng)
        self.nodes: tuple[SimNode, ...] = tuple(self._build_nodes(rng, main))
        self.pods: tuple[SimPod, ...] = self._build_pods(rng)
        for pool in (p for p in self.spec.pools if p.own_rng):
            own = random.Random(f"{self.spec.seed}:{pool.name}")
            taken_ips = {n.ip for n in self.nodes}
            nodes = tuple(self._build_nodes(own, (pool,), taken_ips))
            self.nodes += nodes
            names = {(p.namespace, p.name) for p in self.pods}
            self.pods += tuple(self._build_gpu_pods(own, names, nodes, forced_roles=False))
        self.shared: SharedPools | None = None
        if self.spec.shared_gpus:
            # Imported here: demo/shared_pools.py reads this package's public names.
            from aifinops.demo.shared_pools import SharedPools

            self.shared = SharedPools.build(self.spec.seed)
            self.nodes += self.shared.nodes
            self.pods += self.shared.pods
            for pod in self.shared.pods:  # team-<tenant>: named by the namespace pattern
                self.namespaces.setdefault(
                    pod.namespace, {"kubernetes.io/metadata.name": pod.namespace}
                )
        self.node_by_name: dict[str, SimNode] = {n.name: n for n in self.nodes}
        generations = self.spec.dcgm_generations or ("4.8",)
        pinned = {p.name: p.dcgm_generation for p in self.spec.pools if p.dcgm_generation}
        gpu_nodes = [n.name for n in self.nodes if n.gpus and n.pool not in pinned]
        self._generation: dict[str, str] = {
            name: generations[i % len(generations)] for i, name in enumerate(gpu_nodes)
        }
        self._generation.update({n.name: pinned[n.pool] for n in self.nodes if n.pool in pinned})
        if self.shared is not None:
            from aifinops.demo.shared_pools import SHARED_DCGM_GENERATION

            self._generation.update(dict.fromkeys(self.shared.node_names, SHARED_DCGM_GENERATION))
        self._tenant_cache: dict[tuple[str, str], str] = {}
        # The pods holding each GPU unit, in pod order (who dcgm-exporter attributes it to).
        self.unit_pods: dict[UnitKey, list[tuple[SimPod, GpuHold]]] = defaultdict(list)
        for pod in self.pods:
            for hold in pod.holds:
                self.unit_pods[hold.unit].append((pod, hold))
        # Exact power and energy counters for the pools of ``spec.energy`` (the owned pools).
        self.energy: EnergySim | None = None
        if self.spec.energy is not None:
            self.energy = EnergySim(
                self.spec.energy, self.nodes, self.pods, timeslice_util=self.spec.timeslice_util
            )

    # --- building ---------------------------------------------------------------------------

    def _build_pods(self, rng: random.Random) -> tuple[SimPod, ...]:
        pods: list[SimPod] = []
        names: set[tuple[str, str]] = set()
        pods.extend(self._build_gpu_pods(rng, names))
        pods.extend(self._build_system_pods(rng, names))
        pods.extend(self._build_cpu_pods(rng, names, len(pods)))
        return tuple(pods)

    def _build_nodes(
        self,
        rng: random.Random,
        pools: Sequence[NodePoolSpec],
        taken_ips: Iterable[str] = (),
    ) -> list[SimNode]:
        nodes: list[SimNode] = []
        used_ips: set[str] = set(taken_ips)
        for pool in pools:
            model = GPU_MODELS[pool.gpu_model] if pool.gpu_model else None
            for _ in range(pool.nodes):
                while True:
                    ip = f"10.0.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}"
                    if ip not in used_ips:
                        used_ips.add(ip)
                        break
                name = f"ip-{ip.replace('.', '-')}.ec2.internal"
                if pool.node_prefix:
                    name = f"{pool.node_prefix}-{ip.replace('.', '-')}"
                gpus: list[SimGpu] = []
                buses = sorted(rng.sample(range(0x10, 0xF0), pool.gpus_per_node))
                for idx in range(pool.gpus_per_node):
                    assert model is not None
                    h = _hex(rng, 32)
                    uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
                    mig: tuple[MigInstance, ...] = ()
                    if pool.sharing == "mig":
                        layout = MIG_LAYOUTS[(len(nodes) + idx) % len(MIG_LAYOUTS)]
                        mig = mig_instances(layout)
                    gpus.append(
                        SimGpu(
                            node=name,
                            index=idx,
                            uuid=uuid,
                            pci_bus_id=f"00000000:{buses[idx]:02X}:00.0",
                            model=model,
                            sharing=pool.sharing,
                            mig=mig,
                        )
                    )
                labels = {
                    "kubernetes.io/hostname": name,
                    "node.kubernetes.io/instance-type": pool.instance_type,
                    "topology.kubernetes.io/zone": pool.zone,
                }
                if model is not None:
                    labels["nvidia.com/gpu.product"] = model.name.replace(" ", "-")
                    if pool.sharing == "mig":
                        labels["nvidia.com/mig.config"] = "custom-mixed"
                    if pool.sharing == "timeslice":
                        labels["nvidia.com/gpu.sharing-strategy"] = "time-slicing"
                nodes.append(
                    SimNode(
                        name=name,
                        pool=pool.name,
                        instance_type=pool.instance_type,
                        zone=pool.zone,
                        provider_id=f"i-0{_hex(rng, 16)}",
                        ip=ip,
                        cpu_cores=pool.cpu_cores,
                        ram_bytes=pool.ram_gib * GIB,
                        gpus=tuple(gpus),
                        labels=labels,
                    )
                )
        return nodes

    def _gpu_slots(
        self, rng: random.Random, nodes: Sequence[SimNode]
    ) -> tuple[list[tuple[SimNode, tuple[GpuHold, ...]]], set[int]]:
        """Where GPU pods go: one entry per pod, with the units it holds, and the ``id()`` of
        the surplus slots. On a partly requested time-sliced GPU the replicas nobody requests
        are slots too: their pods are drawn and then left out, so the rest of the layout is
        the same with or without partial requests. (Ids, not indices: a MIG slot may be
        deleted after; they are valid while the returned list holds the slots.)"""
        spec = self.spec
        slots: list[tuple[SimNode, tuple[GpuHold, ...]]] = []
        surplus: set[int] = set()
        unallocated_left_out = False
        for node in nodes:
            if not node.gpus:
                continue
            sharing = node.gpus[0].sharing
            model = node.gpus[0].model
            if sharing == "none":
                n = len(node.gpus)
                free = sum(rng.random() < spec.unallocated_gpu_fraction for _ in range(n))
                if not unallocated_left_out and n > 1:
                    free = max(free, 1)  # at least one unallocated whole GPU in the cluster
                unallocated_left_out = unallocated_left_out or free > 0
                allocatable = list(node.gpus[: n - free])
                while allocatable:
                    size = rng.choice((8, 4, 2, 1, 1, 1, 1))
                    while size > len(allocatable):
                        size //= 2
                    chunk, allocatable = allocatable[:size], allocatable[size:]
                    slots.append((node, tuple(GpuHold(g.uuid, "", 1.0, model.name) for g in chunk)))
            elif sharing == "mig":
                for gpu in node.gpus:
                    for inst in gpu.mig:
                        if rng.random() < spec.mig_unassigned_fraction:
                            continue
                        frac = inst.slices / model.mig_slices
                        slots.append((node, (GpuHold(gpu.uuid, inst.gi_id, frac, model.name),)))
            else:
                k = max(1, spec.timeslice_replicas)
                for gpu in node.gpus:
                    if rng.random() < spec.unallocated_gpu_fraction:
                        continue
                    # A hash, not the rng: the rest of the layout stays as it was.
                    partly = hash_unit(gpu.uuid, "partly") < spec.timeslice_partly_requested
                    requested = k - k // 2 if partly else k  # 2 of 3, 2 of 4
                    for replica in range(k):
                        slot = (node, (GpuHold(gpu.uuid, "", 1.0 / k, model.name),))
                        if replica >= requested:
                            surplus.add(id(slot))
                        slots.append(slot)
        if spec.mig_unassigned_fraction > 0:
            self._ensure_unassigned_mig(slots)
        return slots, surplus

    def _ensure_unassigned_mig(self, slots: list[tuple[SimNode, tuple[GpuHold, ...]]]) -> None:
        mig_slots = [i for i, (_, holds) in enumerate(slots) if holds[0].gi_id]
        held = {slots[i][1][0].unit for i in mig_slots}
        total = sum(len(g.mig) for n in self.nodes for g in n.gpus)
        if mig_slots and len(held) == total:
            del slots[mig_slots[-1]]

    def _build_gpu_pods(
        self,
        rng: random.Random,
        names: set[tuple[str, str]],
        nodes: Sequence[SimNode] | None = None,
        *,
        forced_roles: bool = True,
    ) -> list[SimPod]:
        """GPU pods on ``nodes`` (default: every node); ``forced_roles`` places the special
        pods (unmatched, unmapped, batch, serving, ...) — once per cluster."""
        spec = self.spec
        slots, surplus = self._gpu_slots(rng, self.nodes if nodes is None else nodes)
        kinds = {i: _slot_kind(holds) for i, (_, holds) in enumerate(slots)}
        # Forced roles first, each on a distinct slot chosen deterministically.
        taken: set[int] = set()

        def pick(pred: Callable[[tuple[GpuHold, ...]], bool]) -> int | None:
            for i, (_, holds) in enumerate(slots):
                if i not in taken and pred(holds):
                    taken.add(i)
                    return i
            return None

        def kinds_of(holds: tuple[GpuHold, ...]) -> str:
            return _slot_kind(holds)

        def single_whole(holds: tuple[GpuHold, ...]) -> bool:
            return kinds_of(holds) == "none" and len(holds) == 1

        role: dict[int, str] = {}
        if forced_roles:
            cheapest = min(
                (h[0].model for _, h in slots), key=lambda m: GPU_MODELS[m].usd_per_hour, default=""
            )
            i = pick(lambda h: single_whole(h) and h[0].model == cheapest)
            if i is None:
                i = pick(single_whole)
            if i is not None:
                role[i] = "unmatched"
            for _ in range(spec.unmapped_dcgm_pods):
                i = pick(single_whole)
                if i is not None:
                    role[i] = "unmapped"
            for _ in range(spec.batch_jobs):
                i = pick(single_whole)
                if i is not None:
                    role[i] = "batch"
            for serving_pod in spec.serving_pods:
                i = pick(lambda h: single_whole(h) and "H100" in h[0].model)
                if i is None:
                    i = pick(single_whole)
                if i is not None:
                    role[i] = f"serving:{serving_pod}"
            if self.tenancy.pod_label_in_pattern_ns is not None:
                i = pick(lambda h: kinds_of(h) == "none")
                if i is not None:
                    role[i] = "pod_label_in_pattern"
            if self.tenancy.labelled_pattern_ns is not None:
                i = pick(lambda h: kinds_of(h) == "mig")
                if i is not None:
                    role[i] = "labelled_pattern"
            if spec.odd_tenant is not None:
                i = pick(lambda h: kinds_of(h) == "timeslice")
                if i is None:
                    i = pick(lambda h: True)
                if i is not None:
                    role[i] = "odd"

        busy = {i: rng.random() >= spec.idle_fraction for i in range(len(slots))}
        for kind in ("none", "mig", "timeslice"):
            members = [i for i in range(len(slots)) if kinds[i] == kind and i not in role]
            if members and all(busy[i] for i in members):
                busy[members[0]] = False
            if members and not any(busy[i] for i in members):
                busy[members[-1]] = True
        for i, r in role.items():
            if r in ("unmapped", "batch") or r.startswith("serving:"):
                busy[i] = True

        # Tenant weights: a few big tenants, a long tail (Zipf-like), as in real clusters.
        tenants = list(spec.tenants)
        cum = _zipf_cum_weights(len(tenants))
        used_cpu: dict[str, float] = defaultdict(float)
        used_ram: dict[str, float] = defaultdict(float)
        pods: list[SimPod] = []
        for i, (node, holds) in enumerate(slots):
            r = role.get(i, "")
            frac = math.fsum(h.fraction for h in holds)
            gpus_on_node = len(node.gpus)
            cpu = max(0.5, round(node.cpu_cores / gpus_on_node * frac * rng.uniform(0.3, 0.85), 1))
            ram = max(
                1.0, round(node.ram_bytes / GIB / gpus_on_node * frac * rng.uniform(0.3, 0.85))
            )
            tenant = rng.choices(tenants, cum_weights=cum)[0]
            if rng.random() < spec.unmatched_fraction:
                tenant = ""
            namespace, labels = self.tenancy.placement(tenant, rng)
            schedule: Schedule | None = None
            if r == "unmatched":
                namespace, labels = "default", {}
            elif r == "pod_label_in_pattern" and self.tenancy.pod_label_in_pattern_ns:
                ns, t = self.tenancy.pod_label_in_pattern_ns
                namespace, labels = ns, {TENANT_LABEL: t}
            elif r == "labelled_pattern" and self.tenancy.labelled_pattern_ns:
                namespace, labels = self.tenancy.labelled_pattern_ns[0], {}
            elif r == "odd":
                namespace, labels = "legal", {}
            elif r == "batch":
                schedule = Schedule(3600.0, 2400.0, math.floor(rng.uniform(0, 3600)))
            app, kind = _gpu_app(holds, r, rng)
            if r.startswith("serving:"):
                namespace, labels = SERVING_NAMESPACE, {TENANT_LABEL: PLATFORM_TENANT}
                app, kind = "vllm-llama", "statefulset"
                name, controller, controller_kind = r.split(":", 1)[1], app, kind
                names.add((namespace, name))
            else:
                name, controller, controller_kind = self._pod_name(app, kind, namespace, rng, names)
            pod_labels = {"app": app, **labels}
            if r == "batch":
                # Restartable batch work: the spot recommendation's candidate.
                pod_labels[FAULT_TOLERANT_LABEL] = "true"
            if controller_kind == "deployment":
                pod_labels["pod-template-hash"] = name.split("-")[-2]
            if namespace == self.tenancy.decoy_team_ns:
                pod_labels[TEAM_LABEL] = "ml-infra"  # not a configured pod label key: ignored
            pv_gib = float(rng.choice((0, 0, 100, 500, 1000))) if kind != "deployment" else 0.0
            serving = controller_kind == "deployment"
            lb = 0.0225 if serving and rng.random() < 0.25 else 0.0
            network = round(rng.uniform(0.005, 0.2), 4) if serving and rng.random() < 0.5 else 0.0
            used_cpu[node.name] += cpu
            used_ram[node.name] += ram * GIB
            pods.append(
                SimPod(
                    namespace=namespace,
                    name=name,
                    node=node.name,
                    container=app.split("-")[0] if kind != "deployment" else "server",
                    controller=controller,
                    controller_kind=controller_kind,
                    labels=pod_labels,
                    cpu_cores=cpu,
                    ram_bytes=ram * GIB,
                    holds=holds,
                    busy=busy[i],
                    pv_gib=pv_gib,
                    pv_name=f"pvc-{_hex(rng, 8)}-{_hex(rng, 4)}" if pv_gib else "",
                    network_usd_per_hour=network,
                    lb_usd_per_hour=lb,
                    lb_service=f"{app}-lb" if lb else "",
                    cost_adjustment=_adjustment(namespace),
                    schedule=schedule,
                    dcgm_mapped=r != "unmapped",
                )
            )
        self._gpu_used_cpu.update(used_cpu)
        self._gpu_used_ram.update(used_ram)
        # Replicas nobody requested: no pod (their draws were made, so nothing else moved).
        return [pod for i, pod in enumerate(pods) if id(slots[i]) not in surplus or i in role]

    def _pod_name(
        self,
        app: str,
        kind: str,
        namespace: str,
        rng: random.Random,
        names: set[tuple[str, str]],
    ) -> tuple[str, str, str]:
        while True:
            if kind == "deployment":
                rs = _k8s_suffix(rng, 10)
                name = f"{app}-{rs}-{_k8s_suffix(rng, 5)}"
                controller = app
            elif kind == "statefulset":
                controller = f"{app}-{_k8s_suffix(rng, 3)}"
                name = f"{controller}-0"
            elif kind == "daemonset":
                controller = app
                name = f"{app}-{_k8s_suffix(rng, 5)}"
            else:  # job / cronjob: the run suffix is added per run
                controller = f"{app}-{_k8s_suffix(rng, 4)}"
                name = controller
            if (namespace, name) not in names:
                names.add((namespace, name))
                return name, controller, kind

    def _build_system_pods(self, rng: random.Random, names: set[tuple[str, str]]) -> list[SimPod]:
        pods: list[SimPod] = []
        daemonsets = [
            ("kube-system", "kube-proxy", 0.1, 0.125),
            ("monitoring", "node-exporter", 0.1, 0.18),
        ]
        for node in self.nodes:
            sets = list(daemonsets)
            if node.gpus:
                sets.append(("gpu-operator", "nvidia-dcgm-exporter", 0.1, 0.5))
            for ns, app, cpu, ram_gib in sets:
                name, controller, kind = self._pod_name(app, "daemonset", ns, rng, names)
                pods.append(
                    SimPod(
                        ns, name, node.name, app, controller, kind, {"app": app}, cpu, ram_gib * GIB
                    )
                )
        general = [n for n in self.nodes if not n.gpus] or list(self.nodes)
        singletons = [
            ("kube-system", "coredns", 0.2, 0.25, 0.0),
            ("monitoring", "prometheus", 2.0, 8.0, 500.0),
            ("opencost", "opencost", 0.5, 1.0, 0.0),
        ]
        for j, (ns, app, cpu, ram_gib, pv) in enumerate(singletons):
            node = general[j % len(general)]
            kind = "statefulset" if pv else "deployment"
            name, controller, kind = self._pod_name(app, kind, ns, rng, names)
            labels = {"app": app}
            if kind == "deployment":
                labels["pod-template-hash"] = name.split("-")[-2]
            pods.append(
                SimPod(
                    ns,
                    name,
                    node.name,
                    app,
                    controller,
                    kind,
                    labels,
                    cpu,
                    ram_gib * GIB,
                    pv_gib=pv,
                    pv_name=f"pvc-{_hex(rng, 8)}-{_hex(rng, 4)}" if pv else "",
                    shared_usd_per_hour=0.05 if app == "prometheus" else 0.0,
                )
            )
        return pods

    def _build_cpu_pods(
        self, rng: random.Random, names: set[tuple[str, str]], existing: int
    ) -> list[SimPod]:
        spec = self.spec
        any_external = False
        if spec.target_pods is not None:
            count = max(0, spec.target_pods - existing)
        else:
            count = spec.cpu_pods_per_node * len(self.nodes)
        tenants = list(spec.tenants)
        cum = _zipf_cum_weights(len(tenants))
        free_cpu = {
            n.name: n.cpu_cores * 0.9 - self._gpu_used_cpu.get(n.name, 0.0) - 0.3
            for n in self.nodes
        }
        free_ram = {
            n.name: n.ram_bytes * 0.9 - self._gpu_used_ram.get(n.name, 0.0) - GIB
            for n in self.nodes
        }
        apps = ("api", "etl", "feature-store", "redis", "postgres", "webhook", "scheduler")
        pods: list[SimPod] = []
        extras: list[str] = []
        if spec.odd_tenant is not None:
            extras.append("legal")
        for j in range(count + len(extras)):
            node = self.nodes[j % len(self.nodes)]
            cpu = min(round(rng.uniform(0.25, 4.0), 2), max(0.0, free_cpu[node.name]) / 4)
            ram = min(rng.uniform(0.5, 16.0) * GIB, max(0.0, free_ram[node.name]) / 4)
            cpu, ram = max(0.05, round(cpu, 3)), max(64 * MIB, float(math.floor(ram / MIB) * MIB))
            free_cpu[node.name] -= cpu
            free_ram[node.name] -= ram
            labels: dict[str, str] = {}
            if j >= count:
                namespace = extras[j - count]
            else:
                tenant = rng.choices(tenants, cum_weights=cum)[0]
                if rng.random() < spec.unmatched_fraction:
                    tenant = ""
                namespace, labels = self.tenancy.placement(tenant, rng)
            app = rng.choice(apps)
            kind = "statefulset" if app in ("redis", "postgres") else "deployment"
            name, controller, kind = self._pod_name(app, kind, namespace, rng, names)
            pod_labels = {"app": app, **labels}
            if kind == "deployment":
                pod_labels["pod-template-hash"] = name.split("-")[-2]
            pv = float(rng.choice((20, 50, 200))) if kind == "statefulset" else 0.0
            external = 0.0
            # The first ETL pod always has one, so every OpenCost field has data.
            if app == "etl" and (rng.random() < 0.5 or not any_external):
                external = round(rng.uniform(0.02, 0.3), 4)  # e.g. an S3 bucket tagged to it
                any_external = True
            pods.append(
                SimPod(
                    namespace=namespace,
                    name=name,
                    node=node.name,
                    container=app,
                    controller=controller,
                    controller_kind=kind,
                    labels=pod_labels,
                    cpu_cores=cpu,
                    ram_bytes=ram,
                    pv_gib=pv,
                    pv_name=f"pvc-{_hex(rng, 8)}-{_hex(rng, 4)}" if pv else "",
                    network_usd_per_hour=round(rng.uniform(0.001, 0.05), 4)
                    if rng.random() < 0.3
                    else 0.0,
                    external_usd_per_hour=external,
                    cost_adjustment=_adjustment(namespace),
                )
            )
        return pods

    # --- tenancy ----------------------------------------------------------------------------

    def tenancy_config(self) -> dict[str, Any]:
        """The exporter's ``tenancy:`` section that names this cluster's tenants (see
        :meth:`Tenancy.config`)."""
        return self.tenancy.config()

    def visible_labels(self, pod: SimPod) -> tuple[dict[str, str], dict[str, str]]:
        """Pod labels and namespace labels as OpenCost reports them: keys sanitized; node, then
        namespace, then pod labels merged into ``labels`` (later ones win)."""
        node = self.node_by_name[pod.node]
        ns_labels = {sanitize_label_key(k): v for k, v in self.namespaces[pod.namespace].items()}
        merged = {sanitize_label_key(k): v for k, v in node.labels.items()}
        merged.update(ns_labels)
        merged.update({sanitize_label_key(k): v for k, v in pod.labels.items()})
        return merged, ns_labels

    def tenant_of(self, pod: SimPod) -> str:
        """The tenant the configured rules give ``pod``, read from what OpenCost reports
        (first match wins: pod label keys, namespace label keys, namespace map, pattern)."""
        key = (pod.namespace, pod.name)
        cached = self._tenant_cache.get(key)
        if cached is not None:
            return cached
        labels, ns_labels = self.visible_labels(pod)
        tenant = self.tenancy.resolve(pod.namespace, labels, ns_labels)
        self._tenant_cache[key] = tenant
        return tenant

    def rule_used(self, pod: SimPod) -> str:
        """Which rule kind decides ``pod``'s tenant (``"none"`` when nothing matches)."""
        labels, ns_labels = self.visible_labels(pod)
        return self.tenancy.rule(pod.namespace, labels, ns_labels)

    def scale_tenant(self, tenant: str, factor: float) -> None:
        """Multiply every request and cost of ``tenant``'s pods by ``factor`` (> 0) from now on,
        e.g. to drive it over budget. OpenCost's idle row is computed from unscaled requests."""
        if not factor > 0 or math.isinf(factor):
            raise ValueError(f"factor must be a finite number > 0, got {factor}")
        self._scale[tenant] = factor

    def cost_multiplier(self, tenant: str) -> float:
        """The factor :meth:`scale_tenant` set for ``tenant`` (1 when never scaled)."""
        return self._scale.get(tenant, 1.0)

    def dcgm_generation(self, node: str) -> str:
        """The dcgm-exporter generation the GPU node ``node`` runs (``"4.8"`` or ``"4.9"``)."""
        return self._generation.get(node, "4.8")

    # --- time -----------------------------------------------------------------------------

    def runs(self, pod: SimPod, start: float, end: float) -> list[PodRun]:
        """The runs of ``pod`` that overlap ``[start, end]`` (unix seconds)."""
        if pod.schedule is None:
            return [PodRun(pod, pod.name, -math.inf, math.inf)]
        s = pod.schedule
        first = math.floor((start - s.phase_s - s.run_s) / s.period_s)
        last = math.floor((end - s.phase_s) / s.period_s)
        out: list[PodRun] = []
        for k in range(first, last + 1):
            run = self._run(pod, s, k)
            if run.end > start and run.start < end:
                out.append(run)
        return out

    @staticmethod
    def _run(pod: SimPod, s: Schedule, k: int) -> PodRun:
        # CronJob pods are named <cronjob>-<scheduled unix minute>-<5 random characters>.
        run_start = s.phase_s + k * s.period_s
        minute = math.floor(run_start / 60)
        name = f"{pod.name}-{minute}-{hash_suffix(pod.namespace, pod.name, minute)}"
        return PodRun(pod, name, run_start, run_start + s.run_s)

    def run_at(self, pod: SimPod, now: float) -> PodRun | None:
        """The run of ``pod`` in progress at ``now`` (start ≤ now < end), if any."""
        if pod.schedule is None:
            return PodRun(pod, pod.name, -math.inf, math.inf)
        s = pod.schedule
        run = self._run(pod, s, math.floor((now - s.phase_s) / s.period_s))
        return run if run.start <= now < run.end else None


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _k8s_suffix(rng: random.Random, n: int) -> str:
    # Kubernetes' rand.String alphabet (no vowels, no confusable digits).
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


def _zipf_cum_weights(n: int) -> list[float]:
    # A few big tenants and a long tail, as in real clusters.
    out: list[float] = []
    acc = 0.0
    for j in range(n):
        acc += 1.0 / (1 + j) ** 0.8
        out.append(acc)
    return out


def _adjustment(namespace: str) -> float:
    """OpenCost cost adjustment (reconciliation) for a namespace: −3 % for about one in ten."""
    if namespace == "data-prod" or hash_unit(namespace, "adjust") < 0.1:
        return -0.03
    return 0.0


def _slot_kind(holds: tuple[GpuHold, ...]) -> str:
    if holds[0].gi_id:
        return "mig"
    if holds[0].fraction < 1.0:
        return "timeslice"
    return "none"


_GPU_APPS_SERVING = (
    "vllm-llama3-70b",
    "vllm-mistral-7b",
    "triton-ranker",
    "embedder",
    "whisper-asr",
)
_GPU_APPS_SMALL = ("embedder", "reranker", "whisper-asr", "ocr", "sd-turbo")


def _gpu_app(holds: tuple[GpuHold, ...], role: str, rng: random.Random) -> tuple[str, str]:
    """(app name, controller kind) for a GPU pod holding ``holds``."""
    if role == "batch":
        return "nightly-eval", "job"
    kind = _slot_kind(holds)
    if kind != "none":
        return rng.choice(_GPU_APPS_SMALL), "deployment"
    n = len(holds)
    if n >= 8:
        return rng.choice(("train-llm", "pretrain", "train-vision")), "statefulset"
    if n >= 2:
        return rng.choice(("finetune-lora", "train-ranker", "vllm-llama3-70b")), (
            "deployment" if rng.random() < 0.4 else "statefulset"
        )
    if rng.random() < 0.2:
        return "jupyter", "statefulset"
    return rng.choice(_GPU_APPS_SERVING), "deployment"
