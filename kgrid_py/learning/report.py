# ruff: noqa: E501  (the HTML template below is kept as written, one element per line)
"""The monitoring report as one self-contained HTML file a clinician can read.

Plots are matplotlib PNGs embedded as ``data:`` URIs (no file or network beside the page); text
is rendered by Jinja2 with autoescaping; every number shown is also in the JSON report.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["render_html"]

_LABELS = {
    "observed_risk": "Observed risk",
    "observed_expected": "Observed : expected",
    "calibration_intercept": "Calibration intercept",
    "calibration_slope": "Calibration slope",
    "ici": "ICI",
    "e50": "E50",
    "e90": "E90",
    "brier": "Brier score",
    "c_index": "Uno's C",
    "auc": "AUC",
    "bias": "Bias (median measured − predicted)",
    "iqr": "IQR of differences",
    "p30": "P30",
    "rmse": "RMSE",
}

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ ko.id }} {{ ko.version }} {{ ko.function }}: monitoring</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.alert{background:#fde2e1;color:#8a1c12;font-weight:600}.insufficient{color:#777;font-style:italic}
.banner{padding:.6em 1em;border-radius:4px;margin:1em 0}.bad{background:#fde2e1}.good{background:#e3f4e1}
.note{color:#555;font-size:.9em}img{max-width:100%}
</style></head><body>
<h1>{{ ko.title }} — {{ ko.id }} {{ ko.version }}, <code>{{ ko.function }}</code></h1>
<p class="note">Generated {{ generated_at }} · window since {{ window.since or "the first call" }}
{% if window.site %}· site {{ window.site }}{% endif %} · kgrid-py {{ software["kgrid-py"] }}</p>
{% if alerts %}<div class="banner bad"><strong>{{ alerts|length }} alert{{ "s" if alerts|length > 1 }}:</strong>
<ul>{% for a in alerts %}<li>{{ a.site }}{% if a.horizon %} · {{ a.horizon }}{% endif %}: {{ label(a.metric) }}
{{ "%.3f"|format(a.value) }} is outside {{ a.minimum if a.minimum is not none else "−∞" }} to
{{ a.maximum if a.maximum is not none else "∞" }}</li>{% endfor %}</ul></div>
{% else %}<div class="banner good">No declared performance range was left.</div>{% endif %}
{% if outcome %}<p><strong>Outcome:</strong> {{ outcome.name }} ({{ outcome.kind }}): {{ outcome.definition }}
{% if outcome.competing_event %}Competing event: {{ outcome.competing_event }}.{% endif %}</p>{% endif %}
<p class="note">Index call: {{ rules.index_call }}. {% if rules.estimator %}Observed risk by
<strong>{{ "Aalen-Johansen (cumulative incidence with the competing event)" if rules.estimator == "aalen-johansen"
else "Kaplan-Meier" }}</strong>; calibration slope, ICI, Brier and discrimination treat competing events as censored.
{% endif %}Metrics with fewer than {{ rules.minimum_events }} events are shown as <em>insufficient data</em>.</p>
{% for s in sites %}
<h2>Site {{ s.site }}</h2>
<p>{{ s.calls }} calls ({{ s.first_call }} to {{ s.last_call }}): {{ s.refused }} refused, {{ s.errors }} errors,
{{ s.warned }} with an out-of-population or plausibility warning.
{% if s.linked_subjects is defined %}{{ s.index_calls }} subjects; {{ s.linked_subjects }} with outcomes.{% endif %}</p>
{% if plots[s.site].volume %}<img alt="calls per week" src="{{ plots[s.site].volume }}">{% endif %}
{% if s.performance %}<h3>Performance</h3><table><tr><th>Metric</th>
{% for p in s.performance %}<th>{{ p.horizon or "value" }}{% if p.horizon_days %} ({{ p.horizon_days }} days){% endif %}</th>{% endfor %}</tr>
<tr><td>Subjects / events</td>{% for p in s.performance %}<td>{{ p.n }}{% if p.events is defined %} / {{ p.events }}{% endif %}
{% if p.competing_events %} ({{ p.competing_events }} competing){% endif %}</td>{% endfor %}</tr>
{% for key in metric_keys(s.performance) %}<tr><td>{{ label(key) }}</td>
{% for p in s.performance %}{% set m = p[key] %}{% set flagged = is_alert(s.site, p.horizon, key) %}
<td class="{{ 'alert' if flagged else ('insufficient' if m and m.status else '') }}">
{% if not m %}—{% elif m.status %}{{ m.status }}{% else %}{{ "%.3f"|format(m.value) }}
{% if m.ci95 %}<br><span class="note">({{ "%.3f"|format(m.ci95[0]) }} to {{ "%.3f"|format(m.ci95[1]) }})</span>{% endif %}
{% endif %}</td>{% endfor %}</tr>{% endfor %}</table>
{% for img in plots[s.site].calibration %}<img alt="calibration curve" src="{{ img }}">{% endfor %}{% endif %}
{% if s.drift %}<h3>Input drift against the development population</h3>
<table><tr><th>Input</th><th>n</th><th>Mean (dev.)</th><th>SD (dev.)</th><th>SMD</th><th>PSI</th></tr>
{% for d in s.drift %}<tr><td>{{ d.name }}{% if d.scale %} <span class="note">{{ d.scale }}</span>{% endif %}
{% if d.approximate %} <span class="note">(approximate reference)</span>{% endif %}</td><td>{{ d.n }}</td>
<td>{% if d.mean is defined %}{{ "%.3g"|format(d.mean) }}{% if d.development_mean is defined %} ({{ "%.3g"|format(d.development_mean) }}){% endif %}{% elif d.levels %}{% for k, v in d.levels.items() %}{{ k }} {{ "%.1f"|format(100*v.share) }}% ({{ "%.1f"|format(100*v.development) }}%) {% endfor %}{% endif %}</td>
<td>{% if d.sd is defined %}{{ "%.3g"|format(d.sd) }}{% if d.development_sd is defined %} ({{ "%.3g"|format(d.development_sd) }}){% endif %}{% endif %}</td>
<td class="{{ 'alert' if d.smd is defined and d.smd|abs > 0.1 }}">{{ "%.3f"|format(d.smd) if d.smd is defined else "—" }}</td>
<td>{{ "%.3f"|format(d.psi) if d.psi is defined else "—" }}</td></tr>{% endfor %}</table>
<p class="note">|SMD| &gt; 0.1 is highlighted as a habit, not an alert; PSI is over the development deciles.</p>{% endif %}
{% endfor %}
</body></html>
"""


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _volume_plot(volume: list[dict[str, Any]]) -> str | None:
    if not volume:
        return None
    fig, ax = plt.subplots(figsize=(8, 2.6))
    weeks = list(range(len(volume)))
    ax.bar(weeks, [v["calls"] for v in volume], color="#9ab", label="calls")
    ax.bar(weeks, [v["refused"] for v in volume], color="#c44", label="refused")
    ax.plot(weeks, [v["warned"] for v in volume], color="#e90", label="with warnings")
    step = max(1, len(volume) // 8)
    ax.set_xticks(weeks[::step], [v["week"] for v in volume][::step], fontsize=7)
    ax.set_ylabel("per week")
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def _calibration_plot(perf: dict[str, Any]) -> str | None:
    curve = perf.get("curve")
    if not curve:
        return None
    fig, ax = plt.subplots(figsize=(4, 4))
    top = max(max(curve["grid"]), max(curve["high"])) * 1.05
    ax.plot([0, top], [0, top], color="#888", lw=1, ls="--", label="ideal")
    ax.fill_between(curve["grid"], curve["low"], curve["high"], color="#4a7", alpha=0.25, label="95% band")
    ax.plot(curve["grid"], curve["observed"], color="#274", lw=2, label="observed (smoothed)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("predicted risk")
    ax.set_ylabel("observed risk")
    ax.set_title(f"{perf.get('horizon') or ''} calibration", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def render_html(report: dict[str, Any]) -> str:
    """The report dict of :func:`kgrid_py.learning.monitor.monitor` as a self-contained HTML page."""
    plots = {}
    for section in report["sites"]:
        images = [_calibration_plot(p) for p in section.get("performance", [])]
        plots[section["site"]] = {"volume": _volume_plot(section["volume"]), "calibration": [i for i in images if i]}
    alerts = {(a["site"], a["horizon"], a["metric"]) for a in report["alerts"]}

    def metric_keys(performance: list[dict[str, Any]]) -> list[str]:
        return [k for k in _LABELS if any(k in p for p in performance)]

    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    template = env.from_string(_TEMPLATE)
    return template.render(
        **report,
        plots=plots,
        label=lambda key: _LABELS.get(key, key),
        metric_keys=metric_keys,
        is_alert=lambda site, horizon, key: (site, horizon, key) in alerts,
    )
