// The monitor tab: polls the monitor's API once per sampling period (the interval comes from /status) and
// redraws; the samples are read as deltas (what is new since the newest bucket held). Chart.js is the UMD build the monitor serves from node_modules (window.Chart). When the monitor or
// its store stops answering, a banner says since when and the charts are greyed out, never silently frozen.
// Each period costs a window of samples: status, the two series and the alerts. The jobs list and the queue
// change only when a job changes state, which /status counts (job_state_changes), so they are fetched then, or
// every JOBS_EVERY_MS (a running job's stages grow, old jobs leave the window); never on every ingested event.

import { initDaily, refreshDaily } from "./daily.js";
import { initJobDetail } from "./job_detail.js";

const config = JSON.parse(document.getElementById("page-config").textContent);
const API = config.api;
const $ = (id) => document.getElementById(id);

const STAGES = ["model_load", "warmup", "text_encoding", "image_encoding", "image_latents", "denoising", "decode_video", "export"];
const STAGE_COLOURS = {
  model_load: "#8c959f", warmup: "#afb8c1", text_encoding: "#0969da", image_encoding: "#54aeff",
  image_latents: "#8250df", denoising: "#bf3989", decode_video: "#1a7f37", export: "#bc4c00",
};
const SERIES_COLOURS = ["#0969da", "#bf3989", "#1a7f37", "#bc4c00", "#8250df", "#9a6700", "#0e7490", "#57606a"];
const GPU_FIELDS = ["utilization_ratio", "memory_used_bytes", "memory_total_bytes", "temperature_c", "power_w"];
const TICK_MS = { "5m": 60e3, "1h": 15 * 60e3, "24h": 4 * 3600e3 };
const SLOW_EVERY_MS = 5000; // quality, the recommendation and the fleet (workers, queue): at least this often
const JOBS_EVERY_MS = 15000; // jobs and queue: at once after a job changes state, else at least this often
const TARGETS_EVERY_MS = 30000;
const DAILY_EVERY_MS = 30000; // the daily report: when jobs change, at most this often
const REPORTS = ["jobs.csv", "gpu.csv"];
const REPORT_BUCKETS = { "5m": "10s", "1h": "1m", "24h": "5m" }; // gpu.csv rows per GPU: 30, 60, 288
const WINDOW_WORDS = { "5m": "5 minutes", "1h": "hour", "24h": "24 hours" };
const CHART_MISSING = "Chart.js is not installed on the monitor: run `npm install` in the repository root (make run does it). Tables and alerts still update.";

const state = {
  host: config.host_name,
  gpu: "",
  window: "1h",
  intervalMs: Math.max(250, (config.sample_interval_s || 2) * 1000),
  lastGood: null, // Date of the last refresh where the monitor and its store answered
  failingSince: null,
  jobStatesSeen: null,
  jobsAt: 0,
  slowAt: 0,
  targetsAt: 0,
  reportsAt: 0,
  reportHosts: null, // /targets over the reports' window: which hosts had jobs and samples then
  reportHostsKey: "",
  reportHostsAt: 0,
  dailyAt: 0,
  series: {}, // the samples held per measurement, extended by deltas (see fetchSeries)
  timer: null,
  status: null,
};
const charts = {};

// ---- helpers ---------------------------------------------------------------------------------------------

async function getJSON(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined));
  const url = `${API}/${path}${query.toString() ? `?${query}` : ""}`;
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    let body = null;
    try { body = await response.json(); } catch { body = null; }
    return { ok: response.ok, status: response.status, body, error: body && body.error };
  } catch (error) {
    return { ok: false, status: 0, body: null, error: String(error) };
  }
}

function pad(n) { return String(n).padStart(2, "0"); }
function clock(value, seconds = true) {
  if (value === null || value === undefined) return "never";
  const d = value instanceof Date ? value : new Date(value);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? `:${pad(d.getSeconds())}` : ""}`;
}
function dateTime(value) {
  if (!value) return "";
  const d = new Date(value);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;
}
function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i > 1 ? 1 : 0)} ${units[i]}`;
}
function seconds(s) { return s === null || s === undefined ? "—" : `${s < 10 ? s.toFixed(1) : Math.round(s)} s`; }
function sentence(text) { return text ? `${text[0].toUpperCase()}${text.slice(1)}${/[.!?]$/.test(text) ? "" : "."}` : ""; }
function windowMs() { return { "5m": 300e3, "1h": 3600e3, "24h": 86400e3 }[state.window]; }
function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v; else if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

// ---- charts ----------------------------------------------------------------------------------------------

// Ticks on whole minutes or hours of the window, not on Chart.js' round numbers of milliseconds.
function alignTicks(scale) {
  const step = TICK_MS[state.window];
  const ticks = [];
  for (let value = Math.ceil(scale.min / step) * step; value <= scale.max; value += step) ticks.push({ value });
  scale.ticks = ticks;
}

function timeChart(id, yTitle, { min, max, stepped } = {}) {
  if (!window.Chart) return null;
  return new window.Chart($(id), {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      parsing: false,
      normalized: true,
      spanGaps: false,
      interaction: { mode: "nearest", axis: "x", intersect: false },
      elements: { point: { radius: 0, hitRadius: 6 }, line: { borderWidth: 2, stepped: stepped || false } },
      scales: {
        x: {
          type: "linear",
          // Ticks on whole minutes or hours of the window, not on Chart.js' round numbers of milliseconds.
          ticks: { callback: (v) => clock(v, false), maxRotation: 0 },
          afterBuildTicks: alignTicks,
        },
        y: { min, max, beginAtZero: true, title: { display: true, text: yTitle } },
      },
      plugins: {
        legend: { labels: { boxWidth: 12, boxHeight: 2 } },
        tooltip: { callbacks: { title: (items) => (items.length ? clock(items[0].parsed.x) : "") } },
      },
    },
  });
}

function setupCharts() {
  charts.queue = timeChart("chart-queue", "jobs", { stepped: true });
  if (charts.queue) {
    charts.queue.options.scales.y.stacked = true;
    charts.queue.options.scales.y.ticks = { precision: 0 };
    charts.queue.options.scales.y.suggestedMax = 2;
  }
  charts.host = timeChart("chart-host", "% used", { min: 0, max: 100 });
  charts.util = timeChart("chart-util", "% busy", { min: 0, max: 100 });
  charts.mem = timeChart("chart-mem", "% of card (peak)", { min: 0, max: 100 });
  charts.temp = timeChart("chart-temp", "°C");
  charts.power = timeChart("chart-power", "W");
  charts.quality = timeChart("chart-quality", "score (0-1)", { min: 0, max: 1 });
  if (charts.quality) charts.quality.options.elements.point.radius = 4;
  if (window.Chart) {
    charts.stages = new window.Chart($("chart-stages"), {
      type: "bar",
      data: { labels: [], datasets: [] },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        indexAxis: "y",
        scales: { x: { stacked: true, title: { display: true, text: "seconds" } }, y: { stacked: true } },
        plugins: { legend: { labels: { boxWidth: 12 } } },
      },
    });
  }
}

function line(label, data, colour, extra = {}) {
  return { label, data, borderColor: colour, backgroundColor: colour, ...extra };
}
function threshold(label, value, colour, from, to) {
  return line(label, [{ x: from, y: value }, { x: to, y: value }], colour, { borderDash: [6, 4], borderWidth: 1.5, pointRadius: 0 });
}
function draw(chart, datasets, from, to) {
  if (!chart) return;
  chart.data.datasets = datasets;
  chart.options.scales.x.min = from;
  chart.options.scales.x.max = to;
  chart.update("none");
}

// ---- panels ----------------------------------------------------------------------------------------------

function points(series, value) {
  return series.points.map((p) => ({ x: p.t_ms, y: value(p) })).filter((p) => p.y !== null && Number.isFinite(p.y));
}
const ratio = (num, den) => (p) => (p.mean[num] != null && p.mean[den] ? (100 * p.mean[num]) / p.mean[den] : null);
const peakRatio = (num, den) => (p) => (p.max[num] != null && p.mean[den] ? (100 * p.max[num]) / p.mean[den] : null);
const scaled = (name, factor = 1) => (p) => (p.mean[name] != null ? p.mean[name] * factor : null);

function drawHost(body) {
  const to = Date.parse(body.end);
  const from = Date.parse(body.start);
  const datasets = [];
  body.series.forEach((s, i) => {
    const suffix = body.series.length > 1 ? ` (${s.tags.host})` : "";
    datasets.push(line(`CPU${suffix}`, points(s, scaled("cpu_ratio", 100)), SERIES_COLOURS[(2 * i) % 8]));
    datasets.push(line(`Memory${suffix}`, points(s, ratio("memory_used_bytes", "memory_total_bytes")), SERIES_COLOURS[(2 * i + 1) % 8]));
  });
  draw(charts.host, datasets, from, to);
}

function drawGpus(body) {
  const to = Date.parse(body.end);
  const from = Date.parse(body.start);
  const label = (s) => `GPU ${s.tags.gpu}`;
  const each = (value) => body.series.map((s, i) => line(label(s), points(s, value), SERIES_COLOURS[i % 8]));
  draw(charts.util, each(scaled("utilization_ratio", 100)), from, to);
  draw(charts.mem, [
    ...each(peakRatio("memory_used_bytes", "memory_total_bytes")),
    threshold("85% warning", 85, "#9a6700", from, to),
    threshold("95% severe", 95, "#b00020", from, to),
  ], from, to);
  draw(charts.temp, each(scaled("temperature_c")), from, to);
  draw(charts.power, each(scaled("power_w")), from, to);
  let message = "";
  if (!body.series.length) {
    const status = state.status;
    const sampler = status && status.sampler;
    if (state.host === config.host_name && sampler && sampler.nvml_available === false) {
      message = `No GPU on ${state.host}: ${sampler.nvml_reason || "NVML is not available"}. Host and job panels still update.`;
    } else if (state.gpu) {
      message = `No samples from GPU ${state.gpu} on ${state.host} in this window.`;
    } else {
      message = `No GPU samples from ${state.host} in this window.`;
    }
  }
  $("panels").classList.toggle("no-gpu", Boolean(message));
  for (const overlay of document.querySelectorAll(".card.gpu .nogpu")) {
    overlay.textContent = message;
    overlay.hidden = !message;
  }
}

function drawQueue(body) {
  const to = Date.now();
  const from = to - windowMs();
  const pending = body.points.map((p) => ({ x: p.t_ms, y: p.pending }));
  const running = body.points.map((p) => ({ x: p.t_ms, y: p.running }));
  // Stacked areas: running at the bottom, queued on top, so the top edge is every job the generator holds.
  draw(charts.queue, [
    line("Running", running, "#0969da", { fill: "origin", backgroundColor: "rgb(9 105 218 / .35)" }),
    line("Queued", pending, "#bc4c00", { fill: "-1", backgroundColor: "rgb(188 76 0 / .35)" }),
  ], from, to);
}

function drawQuality(body) {
  const to = Date.now();
  const from = to - windowMs();
  const pick = (name) => body.scores.filter((s) => s[name] != null).map((s) => ({ x: s.t_ms, y: s[name], job: s.job_id }));
  const lowColours = body.scores.filter((s) => s.combined != null).map((s) => (s.low_quality ? "#b00020" : "#0969da"));
  draw(charts.quality, [
    line("Combined", pick("combined"), "#0969da", { pointBackgroundColor: lowColours, pointBorderColor: lowColours, clip: 6 }),
    line("Smoothness", pick("smoothness"), "#1a7f37", { borderDash: [2, 2] }),
    line("Image consistency", pick("i2v_subject"), "#8250df", { borderDash: [2, 2] }),
    threshold("Low-quality line", 0.6, "#b00020", from, to),
  ], from, to);
  const empty = document.querySelector("#chart-quality + .empty");
  if (empty) empty.hidden = body.scores.length > 0;
}

function drawJobs(body) {
  const jobs = body.jobs;
  const shown = jobs.slice(0, 12).reverse();
  if (charts.stages) {
    const present = STAGES.filter((stage) => shown.some((j) => j.stages && j.stages[stage]));
    charts.stages.data.labels = shown.map((j) => `${j.job_id.slice(0, 8)} ${j.state || ""}`);
    charts.stages.data.datasets = present.map((stage) => ({
      label: stage.replace("_", " "),
      data: shown.map((j) => (j.stages[stage] ? j.stages[stage].duration_s : 0)),
      backgroundColor: STAGE_COLOURS[stage],
    }));
    charts.stages.update("none");
  }
  const tbody = $("jobs").tBodies[0];
  tbody.replaceChildren();
  if (!jobs.length) {
    tbody.append(el("tr", {}, [el("td", { colspan: "8", class: "muted", text: "No jobs in the last 24 h." })]));
    return;
  }
  for (const job of jobs) {
    const p = job.params || {};
    const params = p.resolution ? `${p.resolution}p · ${p.num_frames} frames · ${p.steps} steps` : "—";
    const cells = [
      el("td", { text: dateTime(job.finished_at || job.last_event_at) }),
      // A button, so the job's detail opens from the keyboard too (monitor/web/static/job_detail.js).
      el("td", {}, [el("button", { type: "button", class: "job-link", "data-job": job.job_id, title: `Open job ${job.job_id}` }, [el("code", { text: job.job_id.slice(0, 8) })])]),
      el("td", { class: `status-${job.state}`, text: job.state || "—", title: job.error ? `${job.error}${job.suggestion ? ` — ${job.suggestion}` : ""}` : "" }),
      el("td", { text: params }),
      el("td", { text: seconds(job.run_s) }),
      el("td", { text: bytes(job.peak_memory_bytes) }),
      el("td", { text: job.energy_j != null ? `${(job.energy_j / 3600).toFixed(2)} Wh` : "—" }),
      el("td", { text: job.gpu || "—" }),
    ];
    tbody.append(el("tr", {}, cells));
  }
}

function drawAlerts(result) {
  const list = $("alerts");
  const status = $("alerts-status");
  list.replaceChildren();
  if (result.status === 404) {
    status.textContent = "Alerts are not available: this monitor does not serve GET /monitor/api/alerts (alerting is not enabled).";
    return;
  }
  if (!result.ok) {
    status.textContent = `Alerts could not be read (${result.status ? `HTTP ${result.status}` : "no answer"}${result.error ? `: ${result.error}` : ""}).`;
    return;
  }
  const here = (result.body.active || []).filter((a) => !state.host || !a.labels.host || a.labels.host === state.host);
  // The Watchdog always fires (a dead-man's switch for Alertmanager): it proves evaluation runs, it is no problem.
  const watchdog = here.some((a) => a.labels.purpose === "deadmansswitch" && a.state === "firing");
  const active = here.filter((a) => a.labels.purpose !== "deadmansswitch");
  const pipeline = watchdog ? "" : " The Watchdog is not firing: alert evaluation may have stopped.";
  status.textContent = `${active.length ? `${active.length} active.` : "No active alerts."}${pipeline}`;
  for (const alert of active) {
    const where = [alert.labels.host, alert.labels.gpu !== undefined ? `GPU ${alert.labels.gpu}` : null].filter(Boolean).join(" · ");
    const since = alert.state === "firing" ? `firing since ${clock(alert.fired_at)}` : `pending since ${clock(alert.active_at)}`;
    const acked = (alert.acks || []).map((a) => `acknowledged by ${a.by}${a.note ? ` (${a.note})` : ""}`).join("; ");
    // The id is the anchor notifications link to (generatorURL: /monitor/#alert-<id>).
    const item = el("li", { id: `alert-${alert.id}`, class: `alert ${alert.severity} ${alert.state}`, "data-alert": alert.alertname }, [
      el("span", { class: "tier", text: alert.severity }),
      el("strong", { text: alert.alertname }),
      el("div", { text: (alert.annotations && (alert.annotations.summary || alert.annotations.description)) || "" }),
      el("div", { class: "meta", text: [where, since, acked].filter(Boolean).join(" · ") }),
    ]);
    list.append(item);
  }
  // The list is drawn after the page loads, so the browser's own jump to the anchor found nothing: do it once.
  const linked = location.hash.startsWith("#alert-") ? document.getElementById(location.hash.slice(1)) : null;
  if (linked && !state.alertShown) {
    state.alertShown = true;
    linked.classList.add("linked");
    linked.scrollIntoView({ block: "center" });
  }
}

// Every worker of the generator (host, GPU and its last sample, state, job, heartbeat) and the queue they share,
// per priority. Read through the monitor (GET fleet), which asks the generator; when it cannot, the panel says why.
function drawFleet(result) {
  const status = $("fleet-status");
  const chips = $("fleet-queue");
  const tbody = $("fleet").tBodies[0];
  const body = result.body;
  if (!result.ok || !body || !Array.isArray(body.workers) || !body.queue) {
    const why = result.error || (result.status ? `HTTP ${result.status}` : "the monitor did not answer");
    status.textContent = `Workers and queue unavailable: ${sentence(why)}`;
    status.className = "rec-warning";
    chips.replaceChildren();
    tbody.replaceChildren(el("tr", {}, [el("td", { colspan: "7", class: "muted", text: "Unknown while the generator cannot be read." })]));
    return;
  }
  const queue = body.queue;
  const busy = body.workers.filter((w) => w.state === "busy").length;
  const kind = queue.mode === "queue" ? "Shared queue" : "In-process queue";
  status.className = "muted";
  status.textContent = `${kind} (${queue.backend}): ${queue.pending} waiting. ${body.workers.length} worker(s), ${busy} busy. From the generator at ${body.source}.`;
  chips.replaceChildren(...(queue.priorities || []).map((p) => el("li", {
    class: p.pending ? "waiting" : "",
    "data-priority": p.priority,
    text: `${p.priority}: ${p.pending} waiting${p.oldest_age_s != null ? `, oldest ${seconds(p.oldest_age_s)}` : ""}`,
  })));
  tbody.replaceChildren();
  if (!body.workers.length) {
    const none = queue.mode === "queue" ? "No live worker: none has announced itself to the queue within its lease." : "No worker.";
    tbody.append(el("tr", {}, [el("td", { colspan: "7", class: "rec-warning", text: none })]));
    return;
  }
  const staleAfter = body.heartbeat_interval_s ? 2 * body.heartbeat_interval_s : null;
  for (const w of body.workers) {
    const gpu = w.gpu === "cpu" ? "CPU" : `GPU ${w.gpu}${w.gpu_name ? ` · ${w.gpu_name}` : ""}`;
    const uuid = w.gpu_uuid ? ` ${w.gpu_uuid.slice(0, 12)}…` : "";
    const d = w.device;
    const now = d
      ? [d.memory_used_bytes != null && d.memory_total_bytes ? `${bytes(d.memory_used_bytes)} of ${bytes(d.memory_total_bytes)}` : null,
        d.utilization_ratio != null ? `${Math.round(d.utilization_ratio * 100)}% busy` : null,
        d.temperature_c != null ? `${Math.round(d.temperature_c)} °C` : null].filter(Boolean).join(" · ")
      : (w.device_note ? "no recent sample (its host's monitor?)" : (w.gpu === "cpu" ? "a CPU worker: no GPU samples" : "—"));
    const job = w.job_id
      ? el("td", {}, [el("button", { type: "button", class: "job-link", "data-job": w.job_id, title: `Open job ${w.job_id}` }, [el("code", { text: w.job_id.slice(0, 8) })])])
      : el("td", { class: "muted", text: "—" });
    const age = w.heartbeat_age_s;
    const stale = staleAfter !== null && age != null && age > staleAfter;
    // Worker and state first: on a phone the table scrolls sideways and these two are what is seen.
    tbody.append(el("tr", { "data-worker": w.name || "" }, [
      el("td", { text: w.host || "—", title: w.name || "" }),
      el("td", { class: `state-${w.state}`, text: w.state, title: w.error || "" }),
      job,
      el("td", {}, [gpu, el("span", { class: "muted", text: uuid, title: w.gpu_uuid || "" })]),
      el("td", { class: stale ? "stale-heartbeat" : "", text: age == null ? "—" : `${seconds(age)} ago` }),
      el("td", { text: `${w.model || "—"}${w.ready ? "" : " (not loaded)"}` }),
      el("td", { class: d ? "" : "muted", text: now, title: w.device_note || "" }),
    ]));
  }
}

function drawRecommendation(result) {
  const box = $("recommendation");
  box.replaceChildren();
  if (!result.ok || !result.body || typeof result.body !== "object") {
    box.append(el("p", { class: "rec-state", text: "unavailable" }));
    const why = result.status === 400 && !state.gpu ? "Pick one GPU above to see its recommendation." : result.error;
    if (why) box.append(el("p", { class: "muted", text: why }));
    return;
  }
  const body = result.body;
  const rec = body.recommended || body.recommendation || body;
  const predicted = body.predicted || {};
  const rows = [
    ["Resolution", rec.resolution ? `${rec.resolution}x${rec.resolution}` : null],
    ["Frames", rec.num_frames],
    ["Steps", rec.steps],
    ["Predicted time", predicted.time_s != null ? seconds(predicted.time_s) : null],
    ["Predicted peak", predicted.peak_bytes != null ? bytes(predicted.peak_bytes) : null],
    ["Time budget", body.basis === "time" && body.budget_s != null ? seconds(body.budget_s) : null],
    body.basis === "time"
      ? ["Device", body.gpu ? `CPU on ${body.gpu.host}` : null]
      : ["GPU", body.gpu ? `${body.gpu.model || ""} (GPU ${body.gpu.gpu} on ${body.gpu.host})`.trim() : null],
  ];
  const dl = el("dl");
  for (const [label, value] of rows) {
    if (value === null || value === undefined) continue;
    dl.append(el("dt", { text: label }), el("dd", { text: String(value) }));
  }
  box.append(dl);
  // A GPU's advice is memory-based; a CPU's is time-based (the largest job predicted to finish within the budget).
  const short = body.basis === "time" ? "Even this is predicted to take longer than the time budget." : "Even this does not fit the free memory now.";
  if (body.fits === false) box.append(el("p", { class: "rec-warning", text: short }));
  if (body.reason) box.append(el("p", { class: "muted", text: sentence(body.reason) }));
}

async function refreshReports() {
  for (const name of REPORTS) {
    const link = document.querySelector(`[data-report="${name}"]`);
    const query = new URLSearchParams({ since: state.window, ...(state.host ? { host: state.host } : {}) });
    if (name === "gpu.csv") query.set("bucket", REPORT_BUCKETS[state.window]);
    link.href = `${API}/reports/${name}?${query}`;
  }
  await refreshReportHosts();
  if (Date.now() - state.reportsAt < TARGETS_EVERY_MS) return;
  state.reportsAt = Date.now();
  let available = false;
  try {
    const response = await fetch(`${API}/reports/jobs.csv?since=5m`, { method: "HEAD", cache: "no-store" });
    available = response.ok;
  } catch { available = false; }
  for (const name of REPORTS) {
    const link = document.querySelector(`[data-report="${name}"]`);
    link.setAttribute("aria-disabled", String(!available));
    if (!available) link.removeAttribute("href");
  }
  $("reports-status").hidden = available;
  $("reports-status").textContent = available ? "" : (config.viewer_token_required ? "CSV reports need the viewer token: sign in above." : "CSV reports are not available on this monitor yet.");
  if (!available) $("reports-host").hidden = true;
}

// The CSV buttons filter to the chosen host. A host that had no jobs in the reports' window (one that only
// sends samples, or a generator and monitor that disagree on the host's name) would give a jobs CSV of headers
// only, so the page says so next to the buttons, names the hosts that had jobs, and offers them all.
async function refreshReportHosts() {
  const key = `${state.host}|${state.window}`;
  if (key !== state.reportHostsKey || Date.now() - state.reportHostsAt >= TARGETS_EVERY_MS) {
    const result = await getJSON("targets", { window: state.window });
    if (result.ok) {
      state.reportHosts = result.body;
      state.reportHostsKey = key;
      state.reportHostsAt = Date.now();
    }
  }
  const note = $("reports-host");
  const seen = state.reportHosts;
  if (!seen || !state.host || state.reportHostsKey !== key || $("csv-jobs").getAttribute("aria-disabled") === "true") {
    note.hidden = true;
    return;
  }
  const span = `the last ${WINDOW_WORDS[state.window] || state.window}`;
  const parts = [];
  if (!seen.hosts_with_jobs.includes(state.host)) {
    const others = seen.hosts_with_jobs.length ? ` Jobs came from ${seen.hosts_with_jobs.join(", ")}.` : " No host had jobs then.";
    parts.push(`No jobs from ${state.host} in ${span}: its jobs CSV would hold only the header.${others}`);
  }
  if (!seen.hosts_sampled.includes(state.host)) parts.push(`No samples from ${state.host} in ${span}: its GPU CSV would be empty.`);
  if (seen.warning) parts.push(sentence(seen.warning));
  if (!parts.length) {
    note.hidden = true;
    return;
  }
  const children = [parts.join(" ")];
  if (!seen.hosts_with_jobs.includes(state.host) && seen.hosts_with_jobs.length) {
    const all = new URLSearchParams({ since: state.window });
    children.push(" ", el("a", { id: "csv-jobs-all", href: `${API}/reports/jobs.csv?${all}`, download: "", text: "Download jobs from all hosts" }));
  }
  note.replaceChildren(...children);
  note.hidden = false;
}

async function refreshTargets(force) {
  if (!force && Date.now() - state.targetsAt < TARGETS_EVERY_MS) return;
  const result = await getJSON("targets", { window: "24h" });
  if (!result.ok) return;
  state.targetsAt = Date.now();
  const hostSelect = $("host");
  const hosts = result.body.hosts;
  if (!hosts.includes(state.host)) state.host = result.body.this_host;
  hostSelect.replaceChildren(...hosts.map((h) => el("option", { value: h, text: h === result.body.this_host ? `${h} (this monitor)` : h })));
  hostSelect.value = state.host;
  const gpus = result.body.gpus[state.host] || [];
  if (state.gpu && !gpus.includes(state.gpu)) state.gpu = "";
  $("gpu").replaceChildren(el("option", { value: "", text: gpus.length ? "All GPUs" : "All GPUs (none seen)" }), ...gpus.map((g) => el("option", { value: g, text: `GPU ${g}` })));
  $("gpu").value = state.gpu;
}

// ---- the viewer token: jobs and reports need it when the monitor has one ----------------------------------

// The session is an HttpOnly cookie the monitor sets: this script never keeps the token after sending it.
function askToSignIn() {
  if (!config.viewer_token_required) return;
  $("sign-in").hidden = false;
  const message = el("td", { colspan: "8", class: "muted", text: "Jobs need the viewer token: sign in above." });
  $("jobs").tBodies[0].replaceChildren(el("tr", {}, [message]));
}

$("sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  let response;
  try {
    response = await fetch(`${API}/session`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: $("viewer-token").value }),
    });
  } catch {
    $("sign-in-error").textContent = "The monitor did not answer; try again in a moment.";
    return;
  }
  if (!response.ok) {
    $("sign-in-error").textContent = response.status === 401 ? "That is not this monitor's viewer token." : `Refused (HTTP ${response.status})`;
    return;
  }
  $("viewer-token").value = "";
  $("sign-in-error").textContent = "";
  $("sign-in").hidden = true;
  state.reportsAt = 0;
  tick(true);
});

// ---- samples: the window once, then only what is new ----------------------------------------------------------

// Each period asks only for the buckets from the newest one held on (`after_ms`): the window is read whole when
// the selection changes, then extended and trimmed here. The newest bucket comes back each time with its later
// samples in, and replaces the one held.
async function fetchSeries(name, params) {
  const key = JSON.stringify(params);
  const held = state.series[name];
  const times = held && held.key === key ? held.body.series.flatMap((s) => s.points.map((p) => p.t_ms)) : [];
  const newest = times.length ? Math.max(...times) : null;
  const result = await getJSON("series", newest === null ? params : { ...params, after_ms: newest });
  if (!result.ok) return result;
  if (newest === null) state.series[name] = { key, body: result.body };
  else mergeSeries(held.body, result.body);
  state.seriesDelta = newest !== null;
  return { ...result, body: state.series[name].body };
}

function mergeSeries(held, delta) {
  const from = Date.parse(delta.start) - delta.bucket_s * 1000; // the window's first bucket starts before it
  for (const fresh of delta.series) {
    const tags = JSON.stringify(fresh.tags);
    const target = held.series.find((s) => JSON.stringify(s.tags) === tags);
    if (!target) {
      held.series.push(fresh);
      continue;
    }
    const first = fresh.points.length ? fresh.points[0].t_ms : Infinity;
    target.points = target.points.filter((p) => p.t_ms < first).concat(fresh.points);
  }
  for (const s of held.series) s.points = s.points.filter((p) => p.t_ms >= from);
  held.series = held.series.filter((s) => s.points.length);
  held.start = delta.start;
  held.end = delta.end;
}

// ---- the loop ---------------------------------------------------------------------------------------------

function showBanner(text, level = "error") {
  const banner = $("banner");
  banner.textContent = text;
  banner.className = level === "warn" ? "banner warn" : "banner";
  banner.hidden = !text;
  $("panels").classList.toggle("stale", Boolean(text) && level !== "warn");
}

async function refresh(force = false) {
  const status = await getJSON("status");
  if (!status.ok) {
    state.failingSince = state.failingSince || new Date();
    const what = status.status ? `has answered HTTP ${status.status}${status.error ? ` (${status.error})` : ""}` : "has not answered";
    showBanner(`The monitor ${what} since ${clock(state.failingSince)}. The charts show data up to ${clock(state.lastGood)}, the last good update; they resume by themselves.`);
    $("updated").textContent = `Last good update ${clock(state.lastGood)}`;
    return;
  }
  state.status = status.body;
  const interval = status.body.sampler && status.body.sampler.interval_s;
  if (interval) state.intervalMs = Math.max(250, interval * 1000);
  const jobStates = status.body.job_state_changes ?? null;
  const jobsDue = force || jobStates !== state.jobStatesSeen || Date.now() - state.jobsAt >= JOBS_EVERY_MS;
  const slow = jobsDue || Date.now() - state.slowAt >= SLOW_EVERY_MS;

  await refreshTargets(force);
  const gpuFilter = { window: state.window, host: state.host, gpu: state.gpu };
  const skipped = Promise.resolve(null);
  const [gpu, host, alerts, jobs, queue, quality, recommendation, fleet] = await Promise.all([
    fetchSeries("gpu", { measurement: "gpu_sample", fields: GPU_FIELDS.join(","), ...gpuFilter }),
    fetchSeries("host", { measurement: "host_sample", fields: "cpu_ratio,memory_used_bytes,memory_total_bytes", window: state.window, host: state.host }),
    getJSON("alerts"),
    jobsDue ? getJSON("jobs", { window: "24h", host: state.host, limit: 20 }) : skipped,
    jobsDue ? getJSON("queue", { window: state.window, host: state.host }) : skipped,
    slow ? getJSON("quality", gpuFilter) : skipped,
    slow ? getJSON("recommendation", { gpu: state.gpu, host: state.host }) : skipped,
    slow ? getJSON("fleet") : skipped,
  ]);
  const storeFailures = [gpu, host, jobs, queue, quality].filter((r) => r && r.status === 503);
  if (gpu.ok) drawGpus(gpu.body);
  if (host.ok) drawHost(host.body);
  drawAlerts(alerts);
  if (jobsDue && (force || Date.now() - state.dailyAt >= DAILY_EVERY_MS)) {
    state.dailyAt = Date.now();
    refreshDaily(state.host);
  }
  if (jobsDue) {
    if (jobs.status === 401) askToSignIn();
    if (jobs.ok) drawJobs(jobs.body);
    if (queue.ok) drawQueue(queue.body);
    if ((jobs.ok || jobs.status === 401) && queue.ok) {
      state.jobsAt = Date.now();
      state.jobStatesSeen = jobStates;
    }
  }
  if (slow) {
    if (quality.ok) {
      drawQuality(quality.body);
      state.slowAt = Date.now();
    }
    drawRecommendation(recommendation);
    drawFleet(fleet);
    refreshReports();
  }

  const body = status.body;
  if (body.store_reachable === false || storeFailures.length) {
    state.failingSince = state.failingSince || new Date();
    const lastWrite = body.last_write_at ? clock(body.last_write_at) : clock(state.lastGood);
    const spooled = body.spool_pending ? ` ${body.spool_pending} points are spooled and will be replayed.` : "";
    showBanner(`The store (${body.store_url}) is unreachable since ${clock(state.failingSince)}: the charts show data up to ${lastWrite}.${spooled}`);
    $("updated").textContent = `Last good update ${clock(state.lastGood)}`;
    return;
  }
  state.failingSince = null;
  state.lastGood = new Date();
  const sampleAgeMs = body.last_sample_time ? Date.now() - body.last_sample_time * 1000 : null;
  if (sampleAgeMs !== null && sampleAgeMs > 3 * state.intervalMs + 2000) {
    showBanner(`No new sample since ${clock(body.last_sample_time * 1000)}: the sampler is stalled or stopped.`, "warn");
  } else if (!window.Chart) {
    showBanner(CHART_MISSING, "warn");
  } else if (body.sampler === null) {
    showBanner("This monitor runs without a sampler: only stored data and job events are shown.", "warn");
  } else {
    showBanner("");
  }
  $("updated").textContent = `Updated ${clock(state.lastGood)} · every ${state.intervalMs / 1000} s`;
}

async function tick(force = false) {
  clearTimeout(state.timer);
  const started = performance.now();
  try {
    await refresh(force);
  } catch (error) {
    showBanner(`The dashboard failed to draw: ${error}. Retrying.`);
    console.error(error);
  } finally {
    const elapsed = performance.now() - started;
    state.timer = setTimeout(() => tick(false), Math.max(100, state.intervalMs - elapsed));
  }
}

function onControls(event) {
  if (event.target.id === "host") { state.host = event.target.value; state.gpu = ""; state.targetsAt = 0; }
  if (event.target.id === "gpu") state.gpu = event.target.value;
  if (event.target.id === "window") state.window = event.target.value;
  const query = new URLSearchParams({ host: state.host, window: state.window, ...(state.gpu ? { gpu: state.gpu } : {}) });
  history.replaceState(null, "", `?${query}`);
  tick(true);
}

// The selection lives in the URL too (?host=&gpu=&window=), so a view can be bookmarked or shared.
const initial = new URLSearchParams(location.search);
if (initial.get("host")) state.host = initial.get("host");
if (initial.get("gpu")) state.gpu = initial.get("gpu");
if (["5m", "1h", "24h"].includes(initial.get("window"))) state.window = initial.get("window");
$("window").value = state.window;
$("host").append(el("option", { value: state.host, text: state.host }));
$("controls").addEventListener("change", onControls);
$("controls").addEventListener("submit", (event) => event.preventDefault());
setupCharts();
initJobDetail({ getJSON, el, seconds, bytes, dateTime });
initDaily({ getJSON, el, seconds, api: API });
if (!window.Chart) showBanner(CHART_MISSING, "warn");
tick(true);
