// The mixin's configuration. Override any field in your own jsonnet:
//
//   (import 'aifinops-mixin/mixin.libsonnet') + {
//     _config+:: { clusterLabel: 'k8s_cluster', idle_gpu_cost_usd_per_hour: 20 },
//   }
//
// The thresholds are declared once, with their meaning, in rules/thresholds.yaml (read here):
// the alerts and the dashboards both take their values from _config.
local thresholds = std.parseYaml(importstr '../rules/thresholds.yaml').thresholds;

{
  _config+:: {
    [name]: thresholds[name].value
    for name in std.objectFields(thresholds)
  } + {
    // The label that names a cluster (an external or target label): every aggregation keeps
    // it, so one bundle serves one Prometheus and a global ruler over many clusters.
    clusterLabel: 'cluster',
    // Selects the exporter's scrape targets (AIFinOpsExporterAbsent).
    exporterSelector: 'job=~"%s"' % self.exporter_job_regex,
    // Added to every aifinops_* series the rules read, e.g. 'job="aifinops-exporter"' where
    // another job exports the same names. Empty (the default): the series are read as is.
    aifinopsSelector: '',
    // Where rules/runbook.md is served; %s is the alert's anchor (its name in lower case).
    // Set it to where your copy of the runbook lives (a fork, a wiki, a docs site).
    runbookURLPattern: 'https://aifinops.example.com/runbook.md#%s',
  },
}
