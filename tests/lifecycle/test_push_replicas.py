"""Two replicas with pushes routed to one (deploy/README.md, "Pushed usage with two
replicas"): the bundled rules' ``max by`` over replicas shows pulled plus pushed usage, not
half of the pushes and not twice the pulled sources. promtool runs the real rule file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.tools import require_binary

ROOT = Path(__file__).resolve().parents[2]
LABELS = 'tenant="acme",model="gpt-4o",provider="openai",token_type="input"'


def test_rules_show_pulled_plus_pushed_when_pushes_go_to_one_replica(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    # pulled: 120 tokens/s and 56.25 USD/h seen by both replicas; pushed: 30 tokens/s and
    # 14.0625 USD/h, held by pod 0 only (the push Service's pod).
    pod0, pod1 = 'instance="pod-0"', 'instance="pod-1"'
    spec = {
        "rule_files": [str(ROOT / "rules" / "tokens.rules.yaml")],
        "evaluation_interval": "5m",
        "tests": [
            {
                "interval": "5m",
                "input_series": [
                    {"series": f"aifinops_tokens_total{{{pod0},{LABELS}}}", "values": "0+45000x24"},
                    {"series": f"aifinops_tokens_total{{{pod1},{LABELS}}}", "values": "0+36000x24"},
                    {
                        "series": f"aifinops_token_cost_usd_total{{{pod0},{LABELS}}}",
                        "values": "0+5.859375x24",
                    },
                    {
                        "series": f"aifinops_token_cost_usd_total{{{pod1},{LABELS}}}",
                        "values": "0+4.6875x24",
                    },
                ],
                "promql_expr_test": [
                    {
                        "expr": "tenant_model_provider_token_type:aifinops_tokens:rate1h",
                        "eval_time": "2h",
                        "exp_samples": [
                            {
                                "labels": "tenant_model_provider_token_type:"
                                f"aifinops_tokens:rate1h{{{LABELS}}}",
                                "value": 150,
                            }
                        ],
                    },
                    {
                        "expr": "tenant_model_provider:aifinops_token_cost_usd_per_hour:rate1h",
                        "eval_time": "2h",
                        "exp_samples": [
                            {
                                "labels": "tenant_model_provider:aifinops_token_cost_usd_per_"
                                'hour:rate1h{tenant="acme",model="gpt-4o",provider="openai"}',
                                "value": 70.3125,
                            }
                        ],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "push-replicas.test.yaml"
    test_file.write_text(yaml.safe_dump(spec))
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
