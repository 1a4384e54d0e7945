"""dcgm-exporter's per-process series (``--kubernetes-virtual-gpus``, NVIDIA/dcgm-exporter PR
#594): the page layout below follows ``internal/pkg/transformation/kubernetes.go``
(``createPerProcessMetrics``: the device's own series kept, one copy per pod with its
processes' summed SM utilization, ``pod``/``namespace``/``container``/``pod_uid`` and
``vgpu`` set) at d5e5f510a1b6b393f39a43293ccd9dc985defc79. DERIVED: UUIDs, pods and values
invented."""

from __future__ import annotations

from aifinops.sources.dcgm import gpu_samples
from aifinops.sources.promtext import parse_text

COMMON = 'gpu="0",UUID="GPU-1b1c",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="n1"'
A = 'container="a",namespace="team-a",pod="a-0",pod_uid="u-a"'
B = 'container="b",namespace="team-b",pod="b-0",pod_uid="u-b"'
PER_PROCESS_PAGE = f"""# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{{{COMMON}}} 60
DCGM_FI_DEV_GPU_UTIL{{{COMMON},{A},vgpu="0"}} 30
DCGM_FI_DEV_GPU_UTIL{{{COMMON},{B},vgpu="1"}} 30
"""
# Without per-process data dcgm-exporter repeats the device's figure on each pod, with no
# device series beside them (and pod_uid only with --kubernetes-enable-pod-uid).
REPEATED_PAGE = f"""DCGM_FI_DEV_GPU_UTIL{{{COMMON},{A}}} 60
DCGM_FI_DEV_GPU_UTIL{{{COMMON},{B}}} 60
"""


def samples(page: str) -> list[tuple[str | None, float, bool]]:
    rows = [(n, dict(labels), v) for n, labels, v in parse_text(page)]
    return [(s.pod, s.utilization, s.per_process) for s in gpu_samples(rows, "auto")]


def test_per_process_pod_series_are_marked_and_the_device_series_kept() -> None:
    assert samples(PER_PROCESS_PAGE) == [(None, 0.6, False), ("a-0", 0.3, True), ("b-0", 0.3, True)]


def test_repeated_device_figures_are_not_per_process() -> None:
    assert samples(REPEATED_PAGE) == [("a-0", 0.6, False), ("b-0", 0.6, False)]


# The same GPU with the profiling metric beside it, as an H100 has: only GPU_UTIL and FB_USED
# are per process (#594), so the engine activity is the device's figure on every pod.
PROFILED_PAGE = (
    PER_PROCESS_PAGE
    + f"""# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge
DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{COMMON}}} 0.6
DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{COMMON},{A},vgpu="0"}} 0.6
DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{COMMON},{B},vgpu="1"}} 0.6
"""
)


def test_per_process_figures_win_over_the_repeated_profiling_metric() -> None:
    # Before: auto kept the profiling metric on a profiled GPU and dropped the per-process
    # GPU_UTIL, so each pod read the device's 0.6 and the split was a guess.
    assert samples(PROFILED_PAGE) == [(None, 0.6, False), ("a-0", 0.3, True), ("b-0", 0.3, True)]


def test_a_profiled_gpu_without_per_process_series_still_reads_profiling() -> None:
    page = f"""DCGM_FI_DEV_GPU_UTIL{{{COMMON},{A}}} 60
DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{COMMON},{A}}} 0.45
"""
    assert samples(page) == [("a-0", 0.45, False)]
