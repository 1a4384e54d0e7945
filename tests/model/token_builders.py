"""Literal token scenarios for model tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from aifinops.model.inputs import AllocationSet, Inputs, TokenInputs, TokenObservation
from aifinops.model.llm_prices import LlmPriceCatalog
from aifinops.model.report import ModelContext, ModelState, Report, build_report
from aifinops.model.tokens import SelfHostedSpec, TokenContext
from tests.model.builders import context, idle_row, pod

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
WEIGHTS = {"input": 1.0, "cached_input": 0.1, "output": 4.0}


def obs(
    source: str,
    series: str,
    token_type: str,
    model: str,
    value: float,
    *,
    role: str = "usage",
    tenant: str | None = None,
    provider: str | None = None,
    namespace: str | None = None,
    pod: str | None = None,
    kind: str = "tokens",
    from_zero: bool = False,
) -> TokenObservation:
    return TokenObservation(
        source=source,
        series=series,
        role=role,  # type: ignore[arg-type]
        token_type=token_type,  # type: ignore[arg-type]
        model=model,
        value=value,
        provider=provider,
        tenant=tenant,
        namespace=namespace,
        pod=pod,
        kind=kind,  # type: ignore[arg-type]
        from_zero=from_zero,
    )


def token_context(
    ctx: ModelContext | None = None, specs: Sequence[SelfHostedSpec] = (), **kw: object
) -> ModelContext:
    base = ctx or context()
    return replace(base, tokens=TokenContext(models=tuple(specs), **kw))  # type: ignore[arg-type]


def serving_cluster(gpu: float = 4.0, cpu: float = 0.5, ram: float = 0.25) -> AllocationSet:
    """Two vLLM pods of tenant platform (labelled) serving; an app pod of search; idle row."""
    return AllocationSet(
        1.0,
        (
            pod(
                "llm-serving",
                "vllm-0",
                {"aifinops_io_tenant": "platform"},
                gpu_cost=gpu,
                cpu_cost=cpu,
                ram_cost=ram,
                pv_cost=0.1,
            ),
            pod(
                "llm-serving",
                "vllm-1",
                {"aifinops_io_tenant": "platform"},
                gpu_cost=gpu,
                cpu_cost=cpu,
                ram_cost=ram,
            ),
            pod("team-search", "app", gpu_cost=1.0, cpu_cost=0.2),
            idle_row(gpu_cost=2.0, cpu_cost=1.0),
        ),
    )


@dataclass
class Runner:
    ctx: ModelContext
    catalog: LlmPriceCatalog | None
    state: ModelState = field(default_factory=ModelState)

    def step(
        self,
        now: float,
        observations: Iterable[TokenObservation],
        allocations: AllocationSet | None = None,
        sources: Iterable[str] | None = None,
    ) -> Report:
        o = tuple(observations)
        names = frozenset(sources) if sources is not None else frozenset(x.source for x in o)
        inputs = Inputs(
            gpus=None, allocations=allocations, tokens=TokenInputs(o, names, self.catalog)
        )
        report, self.state = build_report(inputs, self.ctx, self.state, now)
        return report
