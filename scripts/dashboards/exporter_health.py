"""AI FinOps / Exporter health: replicas and sources up, data age, refresh and fetch
durations, fetch errors, the refresh engine process."""

from __future__ import annotations

from .panels import (
    EXPORTER_JOB,
    Json,
    cfg,
    dashboard,
    max_by,
    sel,
    stat,
    state_timeline,
    table,
    timeseries,
)
from .rules import (
    SOURCE_ERRORS,
    SOURCE_UP,
)


def build() -> Json:
    per_replica = "{{source}} · {{instance}}"
    headline = [
        stat(
            "Replicas up",
            "Exporter targets Prometheus scrapes successfully.",
            f"sum({sel('up', EXPORTER_JOB)})",
            "none",
        ),
        stat(
            "Sources up",
            "Sources whose last fetch succeeded on at least one replica.",
            f"sum({sel(SOURCE_UP)})",
            "none",
        ),
        stat(
            "Sources stale",
            "Sources whose data passed stale_after_seconds and was dropped.",
            f"sum({max_by('source', sel('aifinops_source_stale'))})",
            "none",
            thresholds=(("red", 1),),
        ),
        stat(
            "Oldest data in use",
            "Age of the oldest source data any replica serves.",
            f"max({sel('aifinops_source_age_seconds')})",
            "s",
            thresholds=(("orange", 300),),
        ),
        stat(
            "Since last refresh",
            "Time since the most recent refresh cycle of any replica.",
            f"time() - max({sel('aifinops_last_refresh_timestamp_seconds')})",
            "s",
            thresholds=(("orange", 120),),
        ),
        stat(
            "Tenants folded into __other__",
            "Tenants beyond limits.max_tenants (their money is kept in __other__).",
            f"max({sel('aifinops_folded_tenants')})",
            "none",
            thresholds=(("orange", 1),),
        ),
    ]
    up = state_timeline(
        "Source up per replica",
        "Whether each replica's last fetch of each source succeeded.",
        sel("aifinops_source_up"),
        per_replica,
    )
    age = timeseries(
        "Data age per source and replica",
        "Seconds since each source's last successful fetch.",
        [(sel("aifinops_source_age_seconds"), per_replica)],
        "s",
    )
    errors = timeseries(
        "Fetch errors per second",
        "Failed fetches per source and reason (connect, timeout, http_status, too_large, "
        "parse, invalid), last 5 minutes.",
        [(sel(SOURCE_ERRORS), "{{source}} {{reason}}")],
        "short",
        width=8,
    )
    fetch = timeseries(
        "Fetch duration per source",
        "Duration of each source's last fetch and parse (slowest replica).",
        [(max_by("source", sel("aifinops_source_duration_seconds")), "{{source}}")],
        "s",
        width=8,
    )
    refresh = timeseries(
        "Refresh duration per replica",
        "Duration of the last refresh cycle (fetch, model, render).",
        [(sel("aifinops_refresh_duration_seconds"), "{{instance}}")],
        "s",
        width=8,
    )
    refreshes = timeseries(
        "Refreshes per minute per replica",
        "Refresh cycles completed per minute.",
        [(f"rate({sel('aifinops_refreshes_total')}[$__rate_interval]) * 60", "{{instance}}")],
        "short",
    )
    versions = table(
        "Versions per replica",
        "Exporter, rule bundle and GPU price catalog versions.",
        [(sel("aifinops_build_info"), "Up", "none")],
    )
    # server.refresh_process: separate (the default): a second process in the container.
    engine_up = state_timeline(
        "Refresh engine up per replica",
        "Whether each replica's refresh engine process runs (the front restarts one that "
        "exits and serves its last page meanwhile). No data with refresh_process: inline.",
        sel("aifinops_refresh_engine_up"),
        "{{instance}}",
        width=8,
    )
    window = cfg("refresh_engine_restarts_window")
    restarts = timeseries(
        f"Refresh engine restarts, last {window}",
        f"Restarts of the refresh engine per replica in the last {window}; "
        "AIFinOpsRefreshEngineCrashLooping fires at the dashed line.",
        [(f"increase({sel('aifinops_refresh_engine_restarts_total')}[{window}])", "{{instance}}")],
        "short",
        width=8,
        thresholds=(("orange", cfg("refresh_engine_restarts")),),
    )
    # Both processes count against the container's memory limit.
    engine = sel("aifinops_refresh_engine_resident_memory_bytes")
    front = sel("process_resident_memory_bytes", EXPORTER_JOB)
    memory = timeseries(
        "Resident memory: refresh engine and front",
        "Resident memory of the refresh engine and of the process serving the page (the "
        "front), and both together: what the container's memory limit must cover.",
        [
            (engine, "engine · {{instance}}"),
            (front, "front · {{instance}}"),
            (f"{engine} + {front}", "both · {{instance}}"),
        ],
        "bytes",
        width=8,
    )
    return dashboard(
        "aifinops-exporter-health",
        "AI FinOps / Exporter health",
        "The exporter itself: replicas and sources up, data age, refresh and fetch durations, "
        "fetch errors, the refresh engine process.",
        [
            (None, [headline]),
            ("Sources", [[up, age], [errors, fetch, refresh], [refreshes, versions]]),
            ("Refresh engine", [[engine_up, restarts, memory]]),
        ],
        time_from="now-6h",
    )
