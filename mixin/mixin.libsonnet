// The AI FinOps monitoring mixin: _config, prometheusAlerts, prometheusRules and
// grafanaDashboards, as kube-prometheus expects. Render it with scripts/render_rules.py and
// scripts/build_dashboards.py (which write the committed rules/*.rules.yaml and
// dashboards/*.json), or from your own jsonnet.
(import 'config.libsonnet')
+ (import 'rules.libsonnet')
+ (import 'dashboards.libsonnet')
