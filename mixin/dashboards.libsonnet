// grafanaDashboards from mixin/dashboards/*.json: the panels as scripts/build_dashboards.py
// lays them out, with `@@name@@` where a value of _config goes (the thresholds of
// rules/thresholds.yaml, the cluster label, the exporter selector). Filled here, so the
// panels colour at the values the alerts fire at, and a user's _config reaches them too.
local fillString(s, cfg) =
  local parts = std.split(s, '@@');
  if std.length(parts) == 3 && parts[0] == '' && parts[2] == '' then
    cfg[parts[1]]  // the whole string is one placeholder: keep the value's type (a number)
  else if std.length(parts) % 2 == 0 then
    error 'unclosed @@ in %s' % s
  else
    std.join('', [
      if i % 2 == 0 then parts[i] else std.toString(cfg[parts[i]])
      for i in std.range(0, std.length(parts) - 1)
    ]);

local fill(v, cfg) =
  if std.isString(v) then fillString(v, cfg)
  else if std.isArray(v) then [fill(x, cfg) for x in v]
  else if std.isObject(v) then { [k]: fill(v[k], cfg) for k in std.objectFields(v) }
  else v;

{
  _config+:: {
    // Dashboards colour GPU efficiency green from this ratio (twice the alert's low ratio).
    gpuEfficiencyGoodRatio: 2 * self.gpu_efficiency_low_ratio,
  },

  // The unfilled sources, by committed file name.
  dashboardTemplates:: {
    'energy-carbon.json': std.parseJson(importstr 'dashboards/energy-carbon.json'),
    'executive.json': std.parseJson(importstr 'dashboards/executive.json'),
    'exporter-health.json': std.parseJson(importstr 'dashboards/exporter-health.json'),
    'gpu-efficiency.json': std.parseJson(importstr 'dashboards/gpu-efficiency.json'),
    'tenant-chargeback.json': std.parseJson(importstr 'dashboards/tenant-chargeback.json'),
    'tokens-routing.json': std.parseJson(importstr 'dashboards/tokens-routing.json'),
  },

  // Filled with _config, by committed file name (scripts/build_dashboards.py writes these to
  // dashboards/*.json).
  renderedDashboards:: {
    [name]: fill($.dashboardTemplates[name], $._config)
    for name in std.objectFields($.dashboardTemplates)
  },

  grafanaDashboards+:: {
    ['aifinops-' + name]: $.renderedDashboards[name]
    for name in std.objectFields($.renderedDashboards)
  },
}
