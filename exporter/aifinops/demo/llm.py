"""Demo LLM traffic: a fake vLLM (self-hosted model) and a fake LiteLLM proxy, with ground truth.

* **vLLM** serves ``meta-llama/Llama-3.1-8B-Instruct`` from two pods in the serving namespace
  (``llm-serving``); each pod has its own ``/vllm/<pod>/metrics`` page in vLLM V1's format
  (``model_name`` and ``engine`` labels; prompt, cached-prompt and generation counters). The
  two pods share the traffic evenly, except that pod 1 is drained for ``drain_seconds`` and
  then restarted at ``reset_at`` seconds after ``epoch``: its counters go back to zero — the
  counter reset the exporter must neither lose nor double. Each page also has the
  ``vllm:e2e_request_latency_seconds`` histogram with vLLM V1's bucket bounds: every minute of
  its share of the traffic a pod completes the requests of :data:`REQUEST_LATENCIES` (20, in
  fixed buckets), so the p95 over any whole minutes is :data:`EXPECTED_P95_SECONDS`.
* **LiteLLM** (``/litellm/metrics``) routes teams (tenants) to API models (gpt-4o,
  claude-sonnet-4-5, gpt-4.1-mini), to one model the price list does not know
  (``acme-llm-pro``), and to the self-hosted model; every team/model pair is spread over two
  API keys, and one series carries a ``user_email`` — neither may reach the exporter's series.
  The page has LiteLLM's real label set (``litellm/types/integrations/prometheus.py``, as
  tests/fixtures/litellm_proxy_metrics.txt records it): ``team`` is the team id (the
  tenant), ``team_alias`` its display name ("Search Team"); the token and spend counters
  carry ``org_id``/``org_alias`` while the cached-token counter does not; a missing value is
  the string ``"None"`` — one key belongs to no team (its tokens are ``__unallocated__``).
  Input tokens include the cached ones.

Counters grow linearly with ``now``: a series with rate ``r`` tokens/second shows
``r · floor(now − epoch)`` (integers, so ground truth is exact). :meth:`LlmDemo.truth` gives
cumulative tokens, dollars and served tokens at any ``now``; the exporter's counters between
two refreshes at ``t0`` and ``t1`` equal ``truth(t1).minus(truth(t0))`` (a scraped counter's
first reading is a baseline). All traffic to the self-hosted model goes through the proxy, so
the tokens vLLM served equal the tokens the teams sent.

:meth:`LlmDemo.tokens_config` returns the ``tokens:`` configuration section for a running
:func:`llm_app` at a base URL.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from aifinops.demo.upstreams import FAULTS, FaultMode, FaultSwitch, _Body, _serve

SELF_HOSTED_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SELF_HOSTED_ALIAS = "llama-8b"
SELF_HOSTED_PROVIDER = "vllm"
API_EQUIVALENT = "gpt-4o-mini"
SERVING_NAMESPACE = "llm-serving"
SERVING_PODS: tuple[str, ...] = ("vllm-llama-0", "vllm-llama-1")
TOKEN_TYPES = ("input", "output", "cached_input")

LATENCY_METRIC = "vllm:e2e_request_latency_seconds"
# vLLM V1's bucket bounds for this histogram (vllm/v1/metrics/loggers.py, request_latency_buckets).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
# (bucket upper bound, requests) one pod completes per minute of its share of the traffic; a
# request counts in the smallest bucket that holds it (the others are empty).
REQUEST_LATENCIES: tuple[tuple[float, int], ...] = (
    (0.5, 1), (0.8, 2), (1.0, 3), (1.5, 6), (2.0, 4), (2.5, 4),
)  # fmt: skip
REQUESTS_PER_POD_MINUTE = sum(n for _, n in REQUEST_LATENCIES)
# p95 of any whole number of such minutes, as histogram_quantile interpolates it: rank
# 0.95 × 20 = 19 falls in the (2.0, 2.5] bucket, which holds the 17th to 20th requests:
# 2.0 + 0.5 × (19 − 16) / 4.
EXPECTED_P95_SECONDS = 2.375

UsageKey = tuple[str, str, str, str]  # (tenant, model, provider, token_type)
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Traffic:
    """One team's traffic to one model, in tokens per second (integers).

    ``input`` excludes ``cached_input``; LiteLLM's and vLLM's prompt counters show their sum.
    ``price_key`` is the bundled price-list key (``None``: self-hosted or unpriced);
    ``provider`` the label the exporter is expected to give.
    """

    tenant: str
    model: str
    provider: str
    input: int
    output: int
    cached_input: int
    price_key: str | None
    self_hosted: bool = False

    def rate(self, token_type: str) -> int:
        return {"input": self.input, "output": self.output, "cached_input": self.cached_input}[
            token_type
        ]


DEMO_TRAFFIC: tuple[Traffic, ...] = (
    Traffic("search", "gpt-4o", "openai", 40, 10, 20, "gpt-4o"),
    Traffic("chatbot", "claude-sonnet-4-5", "anthropic", 30, 12, 6, "claude-sonnet-4-5"),
    Traffic("ads", "gpt-4.1-mini", "openai", 100, 20, 0, "gpt-4.1-mini"),
    Traffic("research", "acme-llm-pro", "unknown", 8, 2, 0, None),
    Traffic("search", SELF_HOSTED_MODEL, SELF_HOSTED_PROVIDER, 60, 20, 20, None, True),
    Traffic("chatbot", SELF_HOSTED_MODEL, SELF_HOSTED_PROVIDER, 120, 60, 40, None, True),
    Traffic("speech", SELF_HOSTED_MODEL, SELF_HOSTED_PROVIDER, 20, 20, 0, None, True),
    # A key that belongs to no team: LiteLLM writes team="None", team_alias="None".
    Traffic("__unallocated__", "gpt-4.1-mini", "openai", 6, 2, 0, "gpt-4.1-mini"),
)
NO_TEAM = "__unallocated__"
# LiteLLM's api_provider per model of DEMO_TRAFFIC ("None": LiteLLM did not name one).
API_PROVIDERS: Mapping[str, str] = {
    "gpt-4o": "openai",
    "gpt-4.1-mini": "openai",
    "claude-sonnet-4-5": "anthropic",
    "acme-llm-pro": "None",
    SELF_HOSTED_MODEL: "hosted_vllm",
}
# Teams that belong to an organization (the others: org_id="None").
ORGS: Mapping[str, tuple[str, str]] = {
    "search": ("org-7f3a", "Retail"),
    "ads": ("org-7f3a", "Retail"),
    "research": ("org-19c2", "R&D"),
}


def bundled_prices() -> dict[str, Any]:
    """The bundled LiteLLM price subset, parsed (ground truth reads prices from it directly)."""
    text = resources.files("aifinops.data").joinpath("llm_prices.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@dataclass(frozen=True, slots=True)
class LlmTruth:
    """Cumulative ground truth since the demo's epoch.

    ``tokens`` per (tenant, model, provider, token_type); ``api_cost`` USD per key of a priced
    API model (price list: input excludes cached input, cached input at its cache-read price);
    ``unpriced`` tokens per (model, provider); ``served`` tokens the vLLM pods processed per
    token type; ``self_hosted_tokens`` per (tenant, token_type) for the self-hosted model.
    """

    tokens: Mapping[UsageKey, int]
    api_cost: Mapping[UsageKey, float]
    unpriced: Mapping[tuple[str, str], int]
    served: Mapping[str, int]

    def minus(self, earlier: LlmTruth) -> LlmTruth:
        """What accrued between ``earlier`` and this truth."""
        return LlmTruth(
            tokens={k: v - earlier.tokens.get(k, 0) for k, v in self.tokens.items()},
            api_cost={k: v - earlier.api_cost.get(k, 0.0) for k, v in self.api_cost.items()},
            unpriced={k: v - earlier.unpriced.get(k, 0) for k, v in self.unpriced.items()},
            served={k: v - earlier.served.get(k, 0) for k, v in self.served.items()},
        )

    def tenant_api_cost(self, tenant: str) -> float:
        return math.fsum(v for k, v in self.api_cost.items() if k[0] == tenant)


@dataclass(frozen=True, slots=True)
class LlmDemo:
    """The demo's LLM traffic (see the module docstring). Times are unix seconds."""

    epoch: float
    traffic: tuple[Traffic, ...] = DEMO_TRAFFIC
    namespace: str = SERVING_NAMESPACE
    pods: tuple[str, ...] = SERVING_PODS
    reset_at: int = 900
    drain_seconds: int = 60
    team_ids: Mapping[str, str] = field(default_factory=dict)

    def elapsed(self, now: float) -> int:
        """Whole seconds since ``epoch`` (0 before it)."""
        return max(0, math.floor(now - self.epoch))

    # --- vLLM -------------------------------------------------------------------------------
    def _self_hosted_rate(self, token_type: str) -> int:
        return sum(t.rate(token_type) for t in self.traffic if t.self_hosted)

    def _pod_seconds(self, pod_index: int, now: float) -> int:
        """Seconds' worth of its half of the traffic pod ``pod_index`` has served since its
        (re)start: pod 0 serves both halves while pod 1 is drained."""
        elapsed = self.elapsed(now)
        start = self.reset_at - self.drain_seconds
        drained = max(0, min(elapsed, self.reset_at) - start)
        if pod_index == 0:
            return elapsed + drained
        if elapsed < self.reset_at:
            return elapsed - drained
        return elapsed - self.reset_at

    def _pod_counter(self, pod_index: int, token_type: str, now: float) -> int:
        """Tokens pod ``pod_index`` shows (after its restart: since the restart)."""
        rate = self._self_hosted_rate(token_type)
        if rate % 2:
            raise ValueError("self-hosted rates must be even: two pods share them")
        return rate // 2 * self._pod_seconds(pod_index, now)

    def latency_buckets(self, pod: str, now: float) -> dict[float, int]:
        """Cumulative request counts per bucket bound (``math.inf`` included) that pod
        ``pod`` shows: :data:`REQUEST_LATENCIES` times its whole minutes served."""
        minutes = self._pod_seconds(self.pods.index(pod), now) // 60
        per_bound = dict(REQUEST_LATENCIES)
        out: dict[float, int] = {}
        running = 0
        for le in (*LATENCY_BUCKETS, math.inf):
            running += per_bound.get(le, 0) * minutes
            out[le] = running
        return out

    def _latency_lines(self, pod: str, labels: str, now: float) -> list[str]:
        """The e2e latency histogram as prometheus_client writes it (vLLM's exporter)."""
        buckets = self.latency_buckets(pod, now)
        minutes = buckets[math.inf] // REQUESTS_PER_POD_MINUTE
        # _sum: each request at its bucket's midpoint (the lower bound of the first is 0).
        lower = dict(zip(LATENCY_BUCKETS[1:], LATENCY_BUCKETS, strict=False))
        per_minute = math.fsum(n * (lower.get(le, 0.0) + le) / 2 for le, n in REQUEST_LATENCIES)
        name = LATENCY_METRIC
        lines = [
            f"# HELP {name} Histogram of e2e request latency in seconds.\n",
            f"# TYPE {name} histogram\n",
        ]
        for le, count in buckets.items():
            bound = "+Inf" if le == math.inf else repr(le)
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {float(count)}\n')
        lines.append(f"{name}_count{{{labels}}} {float(buckets[math.inf])}\n")
        lines.append(f"{name}_sum{{{labels}}} {per_minute * minutes!r}\n")
        return lines

    def vllm_metrics(self, pod: str, now: float) -> str:
        """The ``/metrics`` page of vLLM pod ``pod`` (V1 engine format)."""
        index = self.pods.index(pod)
        labels = f'engine="0",model_name="{SELF_HOSTED_MODEL}"'
        cached = self._pod_counter(index, "cached_input", now)
        prompt = self._pod_counter(index, "input", now) + cached
        generated = self._pod_counter(index, "output", now)
        running = 0 if index == 1 and self._draining(now) else 3
        return "".join(
            [
                "# HELP vllm:num_requests_running Number of requests in model execution batches.\n",
                "# TYPE vllm:num_requests_running gauge\n",
                f"vllm:num_requests_running{{{labels}}} {float(running)}\n",
                "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n",
                "# TYPE vllm:prompt_tokens_total counter\n",
                f"vllm:prompt_tokens_total{{{labels}}} {float(prompt)}\n",
                "# HELP vllm:prompt_tokens_cached_total Number of cached prompt tokens "
                "(local + external).\n",
                "# TYPE vllm:prompt_tokens_cached_total counter\n",
                f"vllm:prompt_tokens_cached_total{{{labels}}} {float(cached)}\n",
                "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n",
                "# TYPE vllm:generation_tokens_total counter\n",
                f"vllm:generation_tokens_total{{{labels}}} {float(generated)}\n",
                *self._latency_lines(pod, labels, now),
            ]
        )

    def _draining(self, now: float) -> bool:
        e = self.elapsed(now)
        return self.reset_at - self.drain_seconds <= e < self.reset_at

    # --- LiteLLM ----------------------------------------------------------------------------
    def _team_id(self, tenant: str) -> str:
        if tenant == NO_TEAM:
            return "None"
        return self.team_ids.get(tenant) or tenant

    @staticmethod
    def team_alias(tenant: str) -> str:
        """The team's display name (``"None"`` for no team): never a tenant."""
        return "None" if tenant == NO_TEAM else f"{tenant.capitalize()} Team"

    def litellm_metrics(self, now: float) -> str:
        """The proxy's ``/metrics`` page: input (cached included), cached input, output and
        spend per team, model and API key, with LiteLLM's label names in its order."""
        elapsed = self.elapsed(now)
        prices = bundled_prices()
        families: dict[str, list[str]] = {
            "litellm_input_tokens_metric_total": [],
            "litellm_input_cached_tokens_metric_total": [],
            "litellm_output_tokens_metric_total": [],
            "litellm_spend_metric_total": [],
        }
        for t in self.traffic:
            for key_index in (0, 1):
                share: Callable[[int], int] = (
                    (lambda r: r // 2) if key_index == 0 else (lambda r: r - r // 2)
                )
                email = "alice@example.com" if key_index == 1 else "None"
                org_id, org_alias = ORGS.get(t.tenant, ("None", "None"))
                key = (
                    f'end_user="None",hashed_api_key="{hash_hex(t.tenant, t.model, key_index)}",'
                    f'api_key_alias="{t.tenant}-key-{key_index}",model="{t.model}",'
                    f'team="{self._team_id(t.tenant)}",team_alias="{self.team_alias(t.tenant)}",'
                    f'user="u-{key_index}",user_email="{email}"'
                )
                requested = SELF_HOSTED_ALIAS if t.self_hosted else t.model
                deployment = (
                    f'model_id="{hash_hex("deployment", t.model)[:12]}",'
                    f'api_provider="{API_PROVIDERS.get(t.model, "None")}"'
                )
                org = f'org_id="{org_id}",org_alias="{org_alias}"'
                # litellm_input_tokens_metric's labels (org_* appended for _org_label_metrics);
                # the cached-token detail counter shares them but for org_*.
                tokens_labels = f'{key},requested_model="{requested}",{deployment},{org}'
                cached_labels = f'{key},requested_model="{requested}",{deployment}'
                spend_labels = (
                    f'{key},client_ip="10.0.0.{key_index + 1}",user_agent="OpenAI/Python 1.99.9",'
                    f"{deployment},{org}"
                )
                n = {k: share(t.rate(k)) * elapsed for k in TOKEN_TYPES}
                families["litellm_input_tokens_metric_total"].append(
                    f"litellm_input_tokens_metric_total{{{tokens_labels}}} "
                    f"{float(n['input'] + n['cached_input'])}\n"
                )
                if t.cached_input:
                    families["litellm_input_cached_tokens_metric_total"].append(
                        f"litellm_input_cached_tokens_metric_total{{{cached_labels}}} "
                        f"{float(n['cached_input'])}\n"
                    )
                families["litellm_output_tokens_metric_total"].append(
                    f"litellm_output_tokens_metric_total{{{tokens_labels}}} {float(n['output'])}\n"
                )
                spend = _usd(prices, t.price_key, n) if t.price_key else 0.0
                families["litellm_spend_metric_total"].append(
                    f"litellm_spend_metric_total{{{spend_labels}}} {spend!r}\n"
                )
        out = []
        for name, lines in families.items():
            out.append(f"# HELP {name} LiteLLM proxy counter\n# TYPE {name} counter\n")
            out.extend(lines)
        return "".join(out)

    # --- ground truth -----------------------------------------------------------------------
    def truth(self, now: float) -> LlmTruth:
        """Cumulative ground truth at ``now``."""
        elapsed = self.elapsed(now)
        prices = bundled_prices()
        tokens: dict[UsageKey, int] = {}
        api_cost: dict[UsageKey, float] = {}
        unpriced: dict[tuple[str, str], int] = {}
        for t in self.traffic:
            n = {k: t.rate(k) * elapsed for k in TOKEN_TYPES}
            for k in TOKEN_TYPES:
                if not t.rate(k):
                    continue
                key = (t.tenant, t.model, t.provider, k)
                tokens[key] = n[k]
                if t.price_key:
                    api_cost[key] = n[k] * _price(prices[t.price_key], k)
            if not t.self_hosted and not t.price_key:
                unpriced[(t.model, t.provider)] = sum(n.values())
        served = {k: self._self_hosted_rate(k) * elapsed for k in TOKEN_TYPES}
        return LlmTruth(tokens, api_cost, unpriced, served)

    def weighted_shares(self, weights: Mapping[str, float]) -> dict[str, float]:
        """Each tenant's share ``W_t / D`` of the self-hosted model's serving cost under cost
        ``weights`` (all self-hosted traffic goes through the proxy, so D = Σ W_t)."""
        w: dict[str, float] = {}
        for t in self.traffic:
            if t.self_hosted:
                w[t.tenant] = w.get(t.tenant, 0.0) + math.fsum(
                    weights[k] * t.rate(k) for k in TOKEN_TYPES
                )
        total = math.fsum(w.values())
        return {tenant: v / total for tenant, v in w.items()}

    def weighted_token_rate(self, weights: Mapping[str, float]) -> float:
        """``D``: weighted self-hosted tokens per hour."""
        return 3600.0 * math.fsum(weights[k] * self._self_hosted_rate(k) for k in TOKEN_TYPES)

    # --- configuration ----------------------------------------------------------------------
    def tokens_config(self, base_url: str) -> dict[str, Any]:
        """The ``tokens:`` section that reads a running :func:`llm_app` at ``base_url``."""
        base = base_url.rstrip("/")
        return {
            "sources": [
                {
                    "name": "vllm",
                    "preset": "vllm",
                    "mode": "scrape",
                    # LiteLLM names the tenants of these tokens; vLLM only says what it served.
                    "role": "serving",
                    "scrape_targets": [
                        {
                            "url": f"{base}/vllm/{pod}/metrics",
                            "labels": {"namespace": self.namespace, "pod": pod},
                        }
                        for pod in self.pods
                    ],
                },
                {
                    "name": "litellm",
                    "preset": "litellm",
                    "mode": "scrape",
                    "scrape_targets": [{"url": f"{base}/litellm/metrics"}],
                },
            ],
            "self_hosted": {"api_equivalents": {SELF_HOSTED_MODEL: API_EQUIVALENT}},
            "push": {"enabled": True},
            "rate_window_seconds": 60,
        }

    def latency_config(self, base_url: str, window_seconds: int = 300) -> dict[str, Any]:
        """The ``latency:`` section that measures the self-hosted model's p95 from the vLLM
        pages of a running :func:`llm_app` (scrape mode; provider as the routing candidates
        name it)."""
        base = base_url.rstrip("/")
        return {
            "sources": [
                {
                    "name": "vllm",
                    "mode": "scrape",
                    "provider": SELF_HOSTED_PROVIDER,
                    "window_seconds": window_seconds,
                    "scrape_targets": [{"url": f"{base}/vllm/{pod}/metrics"} for pod in self.pods],
                }
            ]
        }


def _price(entry: Mapping[str, Any], token_type: str) -> float:
    if token_type == "input":
        return float(entry["input_cost_per_token"])
    if token_type == "output":
        return float(entry.get("output_cost_per_token") or 0.0)
    cached = entry.get("cache_read_input_token_cost")
    return float(entry["input_cost_per_token"] if cached is None else cached)


def _usd(prices: Mapping[str, Any], key: str, n: Mapping[str, int]) -> float:
    return math.fsum(n[k] * _price(prices[key], k) for k in TOKEN_TYPES)


def hash_hex(*parts: object) -> str:
    """A deterministic hex digest (Python's ``hash`` is salted per process)."""
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


LLM_UPSTREAMS: tuple[str, ...] = ("vllm", "litellm")
_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def absurd_counters(text: str) -> str:
    """The page with impossible counter values on its first four samples: −5, NaN, +Inf and
    1e300 (the fault mode ``absurd``)."""
    values = ["-5", "NaN", "+Inf", "1e300"]
    out: list[str] = []
    for line in text.splitlines():
        if values and line and not line.startswith("#"):
            line = line.rsplit(" ", 1)[0] + " " + values.pop(0)
        out.append(line)
    return "\n".join(out) + "\n"


def llm_app(
    demo: LlmDemo, clock: Clock = time.time, faults: FaultSwitch | None = None
) -> web.Application:
    """The fake vLLM pods (``/vllm/{pod}/metrics``) and LiteLLM proxy (``/litellm/metrics``).

    With ``faults`` (a :class:`~aifinops.demo.upstreams.FaultSwitch` built with
    ``extra=LLM_UPSTREAMS``) the pages obey its modes for ``vllm`` (every pod) and ``litellm``
    as the cluster fakes do; ``absurd`` writes :func:`absurd_counters`."""
    app = web.Application()
    switch = faults if faults is not None else FaultSwitch(extra=LLM_UPSTREAMS)
    app[FAULTS] = switch

    def page(render_text: Callable[[], str]) -> Callable[[FaultMode], _Body]:
        def render(mode: FaultMode) -> _Body:
            if mode == "empty":
                return _Body(200, b"", _TEXT, "text")
            text = render_text()
            if mode == "absurd":
                text = absurd_counters(text)
            return _Body(200, text.encode(), _TEXT, "text")

        return render

    async def vllm(request: web.Request) -> web.StreamResponse:
        pod = request.match_info["pod"]
        if pod not in demo.pods:
            raise web.HTTPNotFound()
        return await _serve(request, "vllm", page(lambda: demo.vllm_metrics(pod, clock())))

    async def litellm(request: web.Request) -> web.StreamResponse:
        return await _serve(request, "litellm", page(lambda: demo.litellm_metrics(clock())))

    app.router.add_get("/vllm/{pod}/metrics", vllm)
    app.router.add_get("/litellm/metrics", litellm)
    return app
