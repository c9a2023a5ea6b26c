// The daily report on the dashboard: per day and resolution, jobs, failures, p50/p95 time, mean quality,
// energy and cost (GET reports/aggregate.json?group_by=day,resolution, the same rows as aggregate.csv).
// The chart stacks each day's cost by resolution when a price is configured, else its energy, else its jobs;
// the table below it holds every number.

const DAYS = "14d";
const RESOLUTION_COLOURS = { 256: "#54aeff", 512: "#0969da", 768: "#8250df", 1024: "#bf3989" };
let h = null; // the dashboard's helpers: getJSON, el, seconds
let chart = null;

const $ = (id) => document.getElementById(id);

function metric(body) {
  const rows = body.rows;
  if (rows.some((r) => r.cost !== null && r.cost !== undefined) && (body.prices.per_kwh !== null || body.prices.per_gpu_hour !== null)) {
    return { key: "cost", label: "cost", value: (r) => r.cost };
  }
  if (rows.some((r) => r.energy_j !== null && r.energy_j !== undefined)) {
    return { key: "energy_j", label: "GPU energy, kWh", value: (r) => (r.energy_j === null ? 0 : r.energy_j / 3.6e6) };
  }
  return { key: "jobs", label: "jobs", value: (r) => r.jobs };
}

// Every day of the span, with or without jobs, so the bars keep their place in time (UTC, as the report's days).
function lastDays(count) {
  const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
  return Array.from({ length: count }, (_, i) => new Date(today - (count - 1 - i) * 86400e3).toISOString().slice(0, 10));
}

function cell(value, digits) {
  if (value === null || value === undefined) return "—";
  return typeof value === "number" && digits !== undefined ? value.toFixed(digits) : String(value);
}

function draw(body) {
  const rows = body.rows;
  $("daily-empty").hidden = rows.length > 0;
  const days = lastDays(14);
  const resolutions = [...new Set(rows.map((r) => r.resolution))].sort((a, b) => a - b);
  const shown = metric(body);
  $("daily-metric").textContent = rows.length ? `Bars: ${shown.label} per day, stacked by resolution.` : "";
  if (window.Chart) {
    const datasets = resolutions.map((res) => ({
      label: `${res}p`,
      data: days.map((day) => {
        const row = rows.find((r) => r.day === day && r.resolution === res);
        return row ? shown.value(row) : 0;
      }),
      backgroundColor: RESOLUTION_COLOURS[res] || "#57606a",
      maxBarThickness: 48,
    }));
    if (!chart) {
      chart = new window.Chart($("chart-daily"), {
        type: "bar",
        data: { labels: days, datasets },
        options: {
          animation: false, responsive: true, maintainAspectRatio: false,
          scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: shown.label } } },
          plugins: { legend: { labels: { boxWidth: 12 } } },
        },
      });
    } else {
      chart.data.labels = days;
      chart.data.datasets = datasets;
      chart.options.scales.y.title.text = shown.label;
      chart.update("none");
    }
  }
  const tbody = $("daily").tBodies[0];
  tbody.replaceChildren(...[...rows].reverse().map((r) => h.el("tr", {}, [
    h.el("td", { text: r.day }),
    h.el("td", { text: `${r.resolution}p` }),
    h.el("td", { text: cell(r.jobs) }),
    h.el("td", { class: r.failed ? "status-failed" : "", text: cell(r.failed) }),
    h.el("td", { text: r.run_s_p50 === null ? "—" : h.seconds(r.run_s_p50) }),
    h.el("td", { text: r.run_s_p95 === null ? "—" : h.seconds(r.run_s_p95) }),
    h.el("td", { text: cell(r.combined_mean, 2) }),
    h.el("td", { text: r.energy_j === null ? "—" : `${(r.energy_j / 3600).toFixed(2)} Wh` }),
    h.el("td", { text: cell(r.cost, 4) }),
  ])));
  if (!rows.length) tbody.append(h.el("tr", {}, [h.el("td", { colspan: "9", class: "muted", text: "No finished jobs in the last 14 days." })]));
}

export async function refreshDaily(host) {
  const query = { group_by: "day,resolution", since: DAYS, ...(host ? { host } : {}) };
  $("csv-daily").href = `${h.api}/reports/aggregate.csv?${new URLSearchParams(query)}`;
  const result = await h.getJSON("reports/aggregate.json", query);
  if (result.ok) draw(result.body);
  else if (result.status === 404) draw({ rows: [], prices: {} }); // a host with no job in the span
  return result;
}

export function initDaily(helpers) {
  h = helpers;
}
