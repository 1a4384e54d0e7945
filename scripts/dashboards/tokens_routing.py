"""AI FinOps / Tokens and routing: LLM tokens and their cost by model and provider, USD per 1M
tokens measured vs list price, model routing scores and the savings of switching."""

from __future__ import annotations

from .panels import (
    API_TOKENS,
    BY_MODEL,
    PERCENT,
    USD,
    Json,
    bargauge,
    dashboard,
    max_by,
    sel,
    stat,
    table,
    timeseries,
)
from .rules import (
    API_RATIO,
    COST_RATE,
    MODEL_TOKEN_COST,
    TOKEN_COST,
    TOKENS,
)


def build() -> Json:
    tokens, cost = sel(TOKENS), sel(MODEL_TOKEN_COST)
    routing_savings = max_by(
        "workload, model, provider", sel("aifinops_routing_savings_usd_per_month")
    )
    headline = [
        stat("Tokens per second", "All tokens, last hour.", f"sum({tokens})", "short"),
        stat(
            "Token cost (USD/h)",
            "API tokens at list price plus self-hosted tokens at their measured price, last hour.",
            f"sum({cost})",
            USD,
        ),
        stat(
            "API token cost (USD/h)",
            "Dollars paid to API providers (resource tokens of the chargeback).",
            f"sum({sel(COST_RATE, API_TOKENS)})",
            USD,
        ),
        stat(
            "Unpriced tokens over the time range",
            "Tokens of models with no price: their cost is missing, not zero.",
            "sum("
            + max_by(
                "model, provider", f"increase({sel('aifinops_unpriced_tokens_total')}[$__range])"
            )
            + ")",
            "short",
            thresholds=(("orange", 1),),
        ),
        stat(
            "Routing savings (USD/month)",
            "Monthly savings of moving each workload to its recommended model.",
            f"sum({routing_savings})",
            USD,
        ),
        stat(
            "Self-hosted above API price",
            "Self-hosted models and token types whose measured cost per 1M tokens is above "
            "their API equivalent's price.",
            f"sum({sel(API_RATIO)} > bool 1)",
            "none",
            thresholds=(("orange", 1),),
        ),
    ]
    tokens_by_model = timeseries(
        "Tokens per second by model and provider",
        "Last-hour rate of input, output and cached input tokens together.",
        [(f"sum by (model, provider) ({tokens})", BY_MODEL)],
        "short",
        stacked=True,
    )
    cost_by_model = timeseries(
        "Token cost by model and provider (USD/h)",
        "Last-hour token cost rate.",
        [(f"sum by (model, provider) ({cost})", BY_MODEL)],
        USD,
        stacked=True,
    )
    cost_by_tenant = table(
        "Token cost by tenant and model (USD/h)",
        "Last-hour token cost rate per tenant, model and provider.",
        [(f"sum by (tenant, model, provider) ({sel(TOKEN_COST)})", "USD/h", USD)],
        sort_by="USD/h",
    )
    by_type = timeseries(
        "Tokens per second by token type",
        "input (without cached input), output and cached_input.",
        [(f"sum by (token_type) ({tokens})", "{{token_type}}")],
        "short",
        stacked=True,
    )
    prices = table(
        "USD per 1M tokens",
        "source price_list: the price file or an override; source measured: self-hosted "
        "serving cost / tokens.",
        [
            (
                max_by(
                    "model, provider, token_type, source",
                    sel("aifinops_model_cost_per_million_tokens_usd"),
                ),
                "USD / 1M tokens",
                USD,
            )
        ],
        width=10,
    )
    measured_vs_api = timeseries(
        "Self-hosted measured vs API equivalent (USD / 1M tokens)",
        "A self-hosted model's measured price and the list price of the API model configured "
        "as its equivalent.",
        [
            (
                max_by(
                    "model, token_type",
                    sel("aifinops_model_cost_per_million_tokens_usd", 'source="measured"'),
                ),
                "{{model}} {{token_type}} measured",
            ),
            (
                max_by(
                    "model, token_type",
                    sel("aifinops_model_api_equivalent_cost_per_million_tokens_usd"),
                ),
                "{{model}} {{token_type}} API equivalent",
            ),
        ],
        USD,
        width=8,
    )
    ratio = bargauge(
        "Measured / API equivalent price",
        "Above 100% the self-hosted model costs more per token than its API equivalent.",
        sel(API_RATIO),
        "{{model}} {{token_type}}",
        PERCENT,
        width=6,
        thresholds=(("red", 1),),
    )
    scores = table(
        "Routing score per workload and model",
        "Weighted score in [0, 1] of cost, quality and latency among each workload's "
        "candidates (candidates breaking a constraint are excluded); Recommended = 1 marks the "
        "best.",
        [
            (max_by("workload, model, provider", sel("aifinops_routing_score")), "Score", PERCENT),
            (
                max_by("workload, model, provider", sel("aifinops_routing_recommended")),
                "Recommended",
                "none",
            ),
        ],
        sort_by="Score",
    )
    savings = bargauge(
        "Monthly savings of the recommended model per workload",
        "The workload's observed token volume at the recommended model's price vs its current "
        "model.",
        f"sum by (workload) ({routing_savings})",
        "{{workload}}",
        USD,
    )
    return dashboard(
        "aifinops-tokens-routing",
        "AI FinOps / Tokens and routing",
        "LLM tokens and their cost by model and provider, USD per 1M tokens measured vs list "
        "price, model routing scores and the savings of switching.",
        [
            (None, [headline]),
            ("Tokens and cost", [[tokens_by_model, cost_by_model], [cost_by_tenant, by_type]]),
            ("USD per 1M tokens", [[prices, measured_vs_api, ratio]]),
            ("Model routing", [[scores, savings]]),
        ],
    )
