// bandit-stream dashboard: polls /dashboard/api/state and draws what the experiments' owners
// published (lift reports, anomalies, recommendations). It formats numbers, never computes
// them. No library, no network access beyond this worker; data goes into the page as text
// (textContent), never as HTML.
"use strict";

(() => {
  const STATE_URL = "/dashboard/api/state";
  const TOKEN_KEY = "bandit-stream-dashboard-token";
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
    "#edc948", "#9c755f", "#ff9da7", "#bab0ac"];
  const SVG = "http://www.w3.org/2000/svg";

  // a ?token= is kept for this tab only and taken out of the address bar
  const params = new URLSearchParams(location.search);
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  if (params.has("token")) {
    token = params.get("token") || "";
    sessionStorage.setItem(TOKEN_KEY, token);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }

  let state = null;
  let etag = null;
  let lastOk = 0;
  let problem = null;
  let refreshS = 3;
  let timer = null;
  let asked = 0; // the latest poll: an older one's answer (another experiment) is dropped

  // ---- small helpers --------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "onclick") el.addEventListener("click", v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    append(el, children);
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) el.setAttribute(k, String(v));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
  }

  const finite = (x) => typeof x === "number" && Number.isFinite(x);
  const int = (x) => (finite(x) ? Math.round(x).toLocaleString("en-US") : "–");

  // a rate: two decimals below 10 %, one above
  function pct(x, digits) {
    if (!finite(x)) return "–";
    const d = digits ?? (Math.abs(x) < 0.1 ? 2 : 1);
    return (100 * x).toFixed(d) + " %";
  }

  // a lift: one decimal below 10 %, none above, and "> +1000 %" beyond (intervals of tiny
  // samples reach astronomical bounds that say nothing more)
  function signed(x) {
    if (!finite(x)) return "–";
    const v = 100 * x;
    if (v > 1000) return "> +1000 %";
    const digits = Math.abs(v) < 10 ? 1 : 0;
    return (v > 0 ? "+" : v < 0 ? "−" : "±") + Math.abs(v).toFixed(digits) + " %";
  }

  // "[low … high %]": the unit once
  function interval(pair, format) {
    if (!pair || !finite(pair[0]) || !finite(pair[1])) return "";
    const strip = (text) => text.replace(/ %$/, "");
    return "[" + strip(format(pair[0])) + " … " + format(pair[1]) + "]";
  }

  function ago(iso) {
    const t = Date.parse(iso);
    if (!Number.isFinite(t)) return "";
    const s = Math.round((Date.now() - t) / 1000);
    if (s < -5) return "in " + Math.round(-s) + " s";
    if (s < 60) return Math.max(s, 0) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return new Date(t).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function clock(iso) {
    const d = new Date(iso);
    return d.toISOString().slice(11, 19);
  }

  function name(exp, variant) {
    return (exp.variant_names && exp.variant_names[variant]) || variant;
  }

  function colour(exp, variant) {
    const i = exp.variants.indexOf(variant);
    return PALETTE[(i < 0 ? exp.variants.length : i) % PALETTE.length];
  }

  function segmentLabel(key) {
    if (key === "*") return [h("span", { class: "chip all" }, "whole experiment")];
    if (key === "all") return [h("span", { class: "chip" }, "all visitors")];
    return key.split("|").map((part) => {
      const at = part.indexOf(":");
      return at < 0 ? h("span", { class: "chip" }, part)
        : h("span", { class: "chip" }, h("span", { class: "dim" }, part.slice(0, at) + " "),
          part.slice(at + 1));
    });
  }

  function swatch(fill) {
    return s("svg", { width: 10, height: 10, class: "swatch", "aria-hidden": "true" },
      s("rect", { width: 10, height: 10, rx: 2, fill }));
  }

  function pill(text, kind) {
    return h("span", { class: "pill " + kind }, text);
  }

  // ---- polling ----------------------------------------------------------------------------
  // the experiment asked for in the address (#experiment=ID); the server picks when none
  function wantedId() {
    const m = /experiment=([^&]+)/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  async function poll() {
    clearTimeout(timer);
    const mine = ++asked;
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    if (etag) headers["If-None-Match"] = etag;
    const wanted = wantedId();
    const url = STATE_URL + (wanted ? "?experiment=" + encodeURIComponent(wanted) : "");
    try {
      const r = await fetch(url, { headers, cache: "no-store" });
      const body = r.status === 304 ? null : await r.json().catch(() => ({}));
      if (mine !== asked) return;
      if (r.status === 304) {
        lastOk = Date.now();
        problem = null;
      } else if (r.ok) {
        state = body;
        etag = r.headers.get("ETag");
        refreshS = state.refresh_s || refreshS;
        lastOk = Date.now();
        problem = null;
        render();
      } else {
        problem = body.error || "the worker answered " + r.status;
        if (r.status === 401 || r.status === 403) renderRefused(problem);
      }
    } catch (e) {
      if (mine !== asked) return;
      problem = "the worker does not answer (stopped, or restarting?); retrying";
    }
    renderStatus();
    // a hidden tab asks less often
    timer = setTimeout(poll, (document.hidden ? Math.max(30, refreshS) : refreshS) * 1000);
  }

  function renderStatus() {
    const el = document.getElementById("status");
    el.replaceChildren();
    if (problem) {
      el.className = "status bad";
      append(el, [h("span", { class: "dot" }), problem]);
      return;
    }
    if (!state) return;
    const live = state.worker_ready;
    el.className = "status " + (live ? "ok" : "wait");
    const since = lastOk ? Math.round((Date.now() - lastOk) / 1000) : 0;
    append(el, [
      h("span", { class: "dot" }),
      live ? "live" : "worker starting (replicas catching up)",
      h("span", { class: "dim" },
        " · checked " + since + " s ago · every " + refreshS + " s · reports every "
        + state.insights_interval_s + " s"),
    ]);
  }

  // ---- page -------------------------------------------------------------------------------
  function render() {
    const main = document.getElementById("main");
    const tabs = document.getElementById("tabs");
    tabs.replaceChildren();
    if (!state.experiments.length) {
      main.replaceChildren(emptyNoExperiments());
      return;
    }
    const current = state.shown;
    for (const exp of state.experiments) {
      const count = exp.anomaly_count;
      tabs.appendChild(h("a", {
        class: "tab" + (exp.experiment_id === current ? " active" : ""),
        href: "#experiment=" + encodeURIComponent(exp.experiment_id),
      }, exp.experiment_id, " ", pill(exp.status, "status-" + exp.status),
      count ? pill(count + (count === 1 ? " anomaly" : " anomalies"), "warning") : null));
    }
    const exp = state.experiments.find((e) => e.experiment_id === current && e.detail);
    if (exp) main.replaceChildren(experimentView(exp));
  }

  function renderRefused(message) {
    document.getElementById("tabs").replaceChildren();
    document.getElementById("main").replaceChildren(h("section", { class: "empty" },
      h("h2", {}, "Not allowed"), h("p", {}, message)));
  }

  function emptyNoExperiments() {
    return h("section", { class: "empty", "data-testid": "empty-state" },
      h("h2", {}, "No experiments yet"),
      h("p", {}, "This worker knows no experiment (its replica of the ",
        h("code", {}, "experiments"), " topic is empty). Create one with"),
      h("pre", {}, "bandit-stream experiment create ID --variants a,b,c --features device,source"),
      h("p", {}, "It appears here within seconds, and its first lift report within ",
        state.insights_interval_s + " s (BANDIT_INSIGHTS_INTERVAL_S) of its owner seeing it."));
  }

  function emptyNoReport(exp) {
    return h("section", { class: "empty", "data-testid": "empty-state" },
      h("h2", {}, "Waiting for the first lift report"),
      h("p", {}, "The worker that owns ", h("code", {}, exp.experiment_id),
        " publishes lift reports, anomalies and recommendations every ",
        state.insights_interval_s + " s on ", h("code", {}, "insights"),
        " (stored in ", h("code", {}, "insights_history"),
        "). None has been published for this experiment yet; this page updates by itself."));
  }

  function emptyNoTraffic(exp) {
    return h("section", { class: "empty", "data-testid": "empty-state" },
      h("h2", {}, "No traffic yet"),
      h("p", {}, "The latest report of ", h("code", {}, exp.experiment_id),
        " counts no exposure. Rates, lifts and the allocation appear once exposures of its "
        + "decisions are counted (visits → decisions → exposures → conversions); reports "
        + "arrive every " + state.insights_interval_s + " s."));
  }

  function experimentView(exp) {
    const lift = exp.lift_report;
    const head = h("section", { class: "experiment-head" },
      h("h1", {}, exp.experiment_id,
        exp.name && exp.name !== exp.experiment_id ? h("span", { class: "dim" }, " " + exp.name)
          : null),
      h("div", { class: "meta" }, pill(exp.status, "status-" + exp.status),
        " policy ", h("b", {}, exp.policy), " · segments by ",
        h("b", {}, exp.context_features.length ? exp.context_features.join(" × ") : "nothing"),
        " · variants ", exp.variants.map((v) => h("span", { class: "variant" },
          swatch(colour(exp, v)), name(exp, v)))));
    if (!lift) return h("div", {}, head, emptyNoReport(exp));
    const report = lift.report;
    const scale = rateScale(report);
    const quiet = !report.global.exposures;
    return h("div", { class: "experiment", "data-experiment": exp.experiment_id },
      head,
      summary(exp, lift),
      h("div", { class: "columns" },
        anomaliesView(exp), recommendationsView(exp)),
      quiet ? emptyNoTraffic(exp) : experimentWide(exp, report, scale),
      quiet ? null : segmentsView(exp, report, scale));
  }

  function summary(exp, lift) {
    const r = lift.report;
    const g = r.global;
    const card = (label, value, note, testid) => h("div", { class: "card" },
      h("div", { class: "label" }, label),
      h("div", { class: "value", "data-testid": testid || null,
        "data-taken-at": testid === "snapshot" ? lift.taken_at : null }, value),
      note ? h("div", { class: "note" }, note) : null);
    return h("section", { class: "summary" },
      card("decisions", int(g.decisions), r.segments.length + " segments"),
      card("exposures", int(g.exposures)),
      card("conversions", int(g.conversions), "observed " + pct(g.observed_rate)),
      card("decision-grade", int(r.flagged) + " / " + int(r.hypotheses),
        "α = " + r.alpha + " · always-valid"),
      card("snapshot", int(lift.snapshot_version), "taken " + clock(lift.taken_at) + " UTC · "
        + ago(lift.taken_at), "snapshot"));
  }

  function anomaliesView(exp) {
    const list = exp.anomalies;
    const order = { critical: 0, warning: 1, info: 2 };
    const sorted = [...list].sort((a, b) =>
      (order[a.report.severity] ?? 3) - (order[b.report.severity] ?? 3));
    return h("section", { class: "panel anomalies" },
      h("h2", {}, "Anomalies ", h("span", { class: "count" }, String(list.length))),
      list.length
        ? h("ul", {}, sorted.map((d) => h("li", { class: "anomaly " + d.report.severity },
          pill(d.report.severity, d.report.severity), " ",
          h("span", { class: "kind" }, d.report.type.replaceAll("_", " ")), " ",
          h("span", { class: "message" }, d.report.message))))
        : h("p", { class: "dim" }, "None in the latest report."));
  }

  function recommendationsView(exp) {
    const items = exp.recommendation ? exp.recommendation.report.items : [];
    const sorted = [...items].sort((a, b) =>
      (a.status === "decision_grade" ? 0 : 1) - (b.status === "decision_grade" ? 0 : 1));
    return h("section", { class: "panel recommendations" },
      h("h2", {}, "Recommendations ", h("span", { class: "count" }, String(items.length))),
      items.length ? h("ul", {}, sorted.map((item) => {
        // the message states the numbers (rates, lift and interval, n, what is missing)
        const missing = item.missing || {};
        return h("li", { class: "recommendation " + item.status },
          h("div", {}, pill(item.action, "action-" + item.action), " ",
            segmentLabel(item.segment_key), " ",
            item.status === "decision_grade" ? pill("decision-grade", "grade")
              : pill("not yet", "notyet"),
            finite(missing.eta_seconds) ? h("span", { class: "dim" },
              " ETA " + duration(missing.eta_seconds)) : null),
          h("div", { class: "message" }, item.message));
      })) : h("p", { class: "dim" }, "No recommendation in the latest report."));
  }

  function duration(seconds) {
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h";
    return Math.round(seconds / 86400) + " days";
  }

  // the common scale of every rate interval bar of the experiment (the largest bound shown)
  function rateScale(report) {
    let top = 0;
    const see = (cell) => {
      for (const x of [cell.rate, cell.observed_rate, ...(cell.rate_interval || []),
        ...(cell.observed_ci95 || [])]) if (finite(x) && x > top) top = x;
    };
    report.global.variants.forEach(see);
    report.segments.forEach((seg) => seg.variants.forEach(see));
    return top > 0 ? top : 0.01;
  }

  function experimentWide(exp, report, scale) {
    const history = points(exp, "*");
    return h("section", { class: "panel wide" },
      h("h2", {}, "Whole experiment"),
      h("div", { class: "split" },
        h("div", { class: "chart-box" },
          h("div", { class: "chart-title" }, "allocation over time"),
          allocationChart(exp, history, 360, 150)),
        h("div", { class: "table-box" },
          variantTable(exp, report.global.variants, scale, false),
          comparisons(exp, report.global.comparisons))),
      h("p", { class: "legend-note" },
        "rate: inverse-propensity estimate with its always-valid interval (level ",
        pct(report.interval_level, 1), ", e-BH over ", int(report.hypotheses),
        " hypotheses at α = " + report.alpha + "); observed: conversions / exposures with "
        + "Wilson 95 %; share: the variant's share of the exposures (realised allocation). "
        + "Guards: " + int(report.min_exposures) + " exposures and " + int(report.min_conversions)
        + " conversions per side."));
  }

  function segmentsView(exp, report, scale) {
    const segments = [...report.segments].sort((a, b) =>
      b.decisions - a.decisions || a.segment_key.localeCompare(b.segment_key));
    const charted = new Set(exp.charted_segments);
    return h("section", { class: "segments" },
      h("h2", {}, "Segments ", h("span", { class: "count" }, String(segments.length)),
        h("span", { class: "h2-note" }, "largest first · a lift in grey is not tested yet (below "
          + "the guards) · allocation: each variant's share of the segment's exposures at each "
          + "lift report")),
      segments.length ? segments.map((seg) => h("article", {
        class: "segment", "data-segment": seg.segment_key,
      },
      h("header", {}, h("div", { class: "chips" }, segmentLabel(seg.segment_key)),
        h("div", { class: "dim" }, int(seg.decisions) + " decisions")),
      h("div", { class: "split" },
        charted.has(seg.segment_key) ? h("div", { class: "chart-box" },
          h("div", { class: "chart-title" }, "allocation over time"),
          allocationChart(exp, points(exp, seg.segment_key), 250, 120)) : null,
        h("div", { class: "table-box" },
          variantTable(exp, seg.variants, scale, true),
          comparisons(exp, seg.comparisons))))) : h("p", { class: "dim" },
        "No traffic yet: the latest report has no segment."));
  }

  function variantTable(exp, cells, scale, inSegment) {
    const head = ["variant", "exposures", "conversions", "share", "observed",
      "rate [always-valid]", ""];
    if (inSegment) head.push("lift vs its global rate");
    return h("table", { class: "variants" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))),
      h("tbody", {}, cells.map((c) => h("tr", { "data-variant": c.variant_id },
        h("td", { class: "name" }, swatch(colour(exp, c.variant_id)),
          name(exp, c.variant_id),
          inSegment && c.flag ? [" ", pill(c.flag.replace("_", " "), "flag-" + c.flag)] : null),
        h("td", { class: "num" }, int(c.exposures)),
        h("td", { class: "num" }, int(c.conversions)),
        h("td", { class: "num share" }, shareBar(exp, c), pct(c.share, 0)),
        h("td", { class: "num", title: "Wilson 95 % " + interval(c.observed_ci95, pct) },
          pct(c.observed_rate)),
        h("td", { class: "num" }, pct(c.rate), " ",
          h("span", { class: "dim" }, interval(c.rate_interval, (x) => pct(x)))),
        h("td", {}, intervalBar(exp, c, scale)),
        inSegment ? h("td", { class: "num" + (c.tested ? "" : " untested"),
          title: c.tested ? null : "too few samples for the guards: not tested" },
        signed(c.lift_vs_global), " ", h("span", { class: "dim" },
          interval(c.lift_interval, signed))) : null))));
  }

  function comparisons(exp, list) {
    if (!list || !list.length) return null;
    if (!list.some((c) => c.tested)) {
      return h("div", { class: "comparisons dim" },
        "variant vs variant: too few samples yet on both sides");
    }
    return h("div", { class: "comparisons" }, list.map((c) => h("div", {
      class: "comparison" + (c.decision_grade ? " grade" : ""),
    }, h("b", {}, name(exp, c.variant_id)), " vs ", h("b", {}, name(exp, c.versus)), " ",
    signed(c.lift), " ", h("span", { class: "dim" }, interval(c.lift_interval, signed)), " ",
    c.decision_grade ? pill("decision-grade", "grade")
      : pill(c.tested ? "not yet" : "too few samples", "notyet"))));
  }

  // ---- drawings ---------------------------------------------------------------------------
  function shareBar(exp, cell) {
    const w = 40;
    const svg = s("svg", { width: w, height: 8, class: "sharebar", "aria-hidden": "true" },
      s("rect", { x: 0, y: 0, width: w, height: 8, rx: 2, class: "track" }));
    if (finite(cell.share)) {
      svg.appendChild(s("rect", { x: 0, y: 0, width: Math.max(1, w * cell.share), height: 8,
        rx: 2, fill: colour(exp, cell.variant_id) }));
    }
    return svg;
  }

  function intervalBar(exp, cell, scale) {
    const w = 96;
    const x = (v) => 4 + (w - 8) * Math.min(1, Math.max(0, v / scale));
    const svg = s("svg", { width: w, height: 14, class: "intervalbar", role: "img",
      "aria-label": "rate " + pct(cell.rate) + " " + interval(cell.rate_interval, pct) },
    s("line", { x1: 4, x2: w - 4, y1: 7, y2: 7, class: "track" }));
    const [lo, hi] = cell.rate_interval || [];
    const colourOf = colour(exp, cell.variant_id);
    if (finite(cell.rate)) {
      const l = finite(lo) ? lo : 0;
      const u = finite(hi) ? hi : scale;
      svg.appendChild(s("rect", { x: x(l), y: 3, width: Math.max(2, x(u) - x(l)), height: 8,
        rx: 3, fill: colourOf, "fill-opacity": 0.3 }));
      svg.appendChild(s("circle", { cx: x(cell.rate), cy: 7, r: 3.5, fill: colourOf }));
    }
    return svg;
  }

  // the history of one segment: [time, {variant: share}] for the reports that published shares
  function points(exp, key) {
    const out = [];
    for (const p of exp.history) {
      const seg = p.segments[key];
      if (!seg || !seg.shares) continue;
      const values = exp.variants.map((v) => seg.shares[v]);
      if (values.some((v) => !finite(v))) continue;
      out.push({ t: Date.parse(p.taken_at), values });
    }
    return out;
  }

  function allocationChart(exp, pts, width, height) {
    const pad = { l: 34, r: 8, t: 6, b: 18 };
    const iw = width - pad.l - pad.r;
    const ih = height - pad.t - pad.b;
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "chart",
      role: "img", "aria-label": "share of exposures per variant at each lift report" });
    const y = (v) => pad.t + ih * (1 - v);
    for (const g of [0, 0.25, 0.5, 0.75, 1]) {
      svg.appendChild(s("line", { x1: pad.l, x2: pad.l + iw, y1: y(g), y2: y(g), class: "grid" }));
      svg.appendChild(s("text", { x: pad.l - 5, y: y(g) + 3.5, class: "axis", "text-anchor": "end" },
        (100 * g).toFixed(0) + "%"));
    }
    if (!pts.length) {
      svg.appendChild(s("text", { x: pad.l + iw / 2, y: pad.t + ih / 2, class: "axis",
        "text-anchor": "middle" }, "no exposures yet"));
      return svg;
    }
    const t0 = pts[0].t;
    const t1 = pts[pts.length - 1].t;
    const x = (t) => (t1 > t0 ? pad.l + iw * (t - t0) / (t1 - t0) : pad.l);
    // one report: its shares drawn across the whole width
    const series = pts.length === 1 ? [pts[0], pts[0]] : pts;
    const X = pts.length === 1 ? (i) => pad.l + i * iw : (i) => x(series[i].t);
    const below = series.map(() => 0);
    exp.variants.forEach((v, j) => {
      const top = series.map((p, i) => below[i] + p.values[j]);
      let d = "";
      series.forEach((p, i) => { d += (i ? "L" : "M") + X(i).toFixed(1) + "," + y(top[i]).toFixed(1); });
      for (let i = series.length - 1; i >= 0; i--) d += "L" + X(i).toFixed(1) + "," + y(below[i]).toFixed(1);
      svg.appendChild(s("path", { d: d + "Z", fill: colour(exp, v), "fill-opacity": 0.85,
        stroke: "#fff", "stroke-width": 0.6 }, s("title", {}, name(exp, v))));
      top.forEach((value, i) => { below[i] = value; });
    });
    svg.appendChild(s("text", { x: pad.l, y: height - 4, class: "axis" }, clock(pts[0].t)));
    if (pts.length > 1) {
      svg.appendChild(s("text", { x: pad.l + iw, y: height - 4, class: "axis", "text-anchor": "end" },
        clock(pts[pts.length - 1].t) + " UTC"));
    }
    return svg;
  }

  window.addEventListener("hashchange", () => { etag = null; poll(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
  setInterval(() => {
    renderStatus();
    for (const el of document.querySelectorAll("[data-testid=snapshot]")) {
      const exp = state && state.experiments.find((e) => e.detail);
      if (exp && exp.lift_report) {
        const note = el.parentElement.querySelector(".note");
        if (note) note.textContent = "taken " + clock(exp.lift_report.taken_at) + " UTC · "
          + ago(exp.lift_report.taken_at);
      }
    }
  }, 1000);
  poll();
})();
