// grafanaDashboards: the committed dashboards/*.json. They are built by
// scripts/build_dashboards.py, which reads its thresholds, cluster label and exporter
// selector from this mixin's _config (so the panels colour at the values the alerts fire
// at); they are not yet written in jsonnet, so overriding _config here does not rebuild
// them: re-run the script after changing rules/thresholds.yaml.
{
  grafanaDashboards+:: {
    'aifinops-executive.json': std.parseJson(importstr '../dashboards/executive.json'),
    'aifinops-exporter-health.json': std.parseJson(importstr '../dashboards/exporter-health.json'),
    'aifinops-gpu-efficiency.json': std.parseJson(importstr '../dashboards/gpu-efficiency.json'),
    'aifinops-tenant-chargeback.json': std.parseJson(importstr '../dashboards/tenant-chargeback.json'),
    'aifinops-tokens-routing.json': std.parseJson(importstr '../dashboards/tokens-routing.json'),
  },
}
