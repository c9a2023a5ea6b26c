// A job's whole story, opened by clicking a job in the jobs table (or by a link to /monitor/#job-<id>): its
// facts and admission's notes, its stage timeline, the GPU's (or the CPU's) load and memory over its span, its
// quality parts, what it cost, and the clip playing from the generator. One request: GET jobs/<id>/story.
// The dashboard hands its helpers in through initJobDetail, so both draw alike.

let h = null; // the dashboard's helpers: getJSON, el, seconds, bytes, dateTime
const charts = {};
let opened = null; // the job shown

const STAGE_COLOURS = {
  queued: "#d0d7de", text_encoding: "#0969da", image_encoding: "#54aeff", image_latents: "#8250df",
  denoising: "#bf3989", decode_video: "#1a7f37", export: "#bc4c00",
};
const QUALITY = [
  ["combined", "Combined (0-1)"], ["clip_score", "CLIP score (0-100)"], ["i2v_subject", "Image consistency (0-1)"],
  ["smoothness", "Smoothness (0-1)"], ["temporal_flickering", "Temporal flickering (1 = none)"],
  ["dynamic_degree", "Dynamic degree (0-1)"], ["rating", "User rating (stars)"], ["parts_used", "Parts used"],
];

const $ = (id) => document.getElementById(id);

function fill(dl, rows) {
  dl.replaceChildren();
  for (const [label, value] of rows) {
    if (value === null || value === undefined || value === "") continue;
    dl.append(h.el("dt", { text: label }), h.el("dd", { text: String(value) }));
  }
}

function params(p) {
  return p && p.resolution ? `${p.resolution}p · ${p.num_frames} frames · ${p.steps} steps · guidance ${p.guidance_scale}` : null;
}

function number(value, digits = 3) {
  return typeof value === "number" ? Number(value.toFixed(digits)) : value;
}

function energyText(joules) {
  if (joules === null || joules === undefined) return null;
  return joules >= 3600 ? `${(joules / 3600).toFixed(2)} Wh (${Math.round(joules)} J)` : `${joules.toFixed(1)} J`;
}

function chart(id, config) {
  if (!window.Chart) return null;
  if (charts[id]) charts[id].destroy();
  charts[id] = new window.Chart($(id), config);
  return charts[id];
}

function drawTimeline(timeline) {
  const spans = [];
  if (timeline.marks.queued !== null && timeline.marks.running !== null && timeline.marks.running > 0) {
    spans.push({ stage: "queued", start_s: 0, end_s: timeline.marks.running });
  }
  spans.push(...timeline.stages);
  const label = (s) => (s.steps ? `denoising (${s.steps} steps)` : s.stage.replace("_", " "));
  $("detail-timeline-table").replaceChildren(...spans.map((s) => h.el("tr", {}, [
    h.el("th", { scope: "row", text: label(s) }),
    h.el("td", { text: `${s.start_s.toFixed(2)} s` }),
    h.el("td", { text: h.seconds(s.end_s - s.start_s) }),
  ])));
  // A row per stage, every label shown: the chart grows with the stages rather than skipping labels on a phone.
  $("detail-timeline").parentElement.style.height = `${70 + 26 * spans.length}px`;
  chart("detail-timeline", {
    type: "bar",
    data: {
      labels: spans.map(label),
      datasets: [{
        label: "seconds from submission",
        data: spans.map((s) => [s.start_s, Math.max(s.end_s, s.start_s + 0.01)]),
        backgroundColor: spans.map((s) => STAGE_COLOURS[s.stage] || "#57606a"),
      }],
    },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, indexAxis: "y",
      scales: {
        x: { min: 0, title: { display: true, text: "seconds from submission" } },
        y: { ticks: { autoSkip: false } },
      },
      plugins: { legend: { display: false } },
    },
  });
}

function drawDevice(device, origin) {
  const gpu = device.device === "gpu";
  $("detail-device-title").textContent = gpu ? "GPU over the job" : "Host CPU and memory over the job";
  const empty = $("detail-device-empty");
  empty.hidden = device.points.length > 0;
  empty.textContent = device.reason || "";
  const at = (p) => (p.t_ms - origin) / 1000;
  const series = (value) => device.points.map((p) => ({ x: at(p), y: value(p) })).filter((p) => Number.isFinite(p.y));
  const share = (used, total) => (p) => (p[used] != null && p[total] ? (100 * p[used]) / p[total] : NaN);
  const datasets = gpu
    ? [
      { label: "Utilisation %", data: series((p) => (p.utilization_ratio != null ? 100 * p.utilization_ratio : NaN)), borderColor: "#0969da" },
      { label: "Memory % of card", data: series(share("memory_used_bytes", "memory_total_bytes")), borderColor: "#bf3989" },
    ]
    : [
      { label: "CPU %", data: series((p) => (p.cpu_ratio != null ? 100 * p.cpu_ratio : NaN)), borderColor: "#0969da" },
      { label: "Memory %", data: series(share("memory_used_bytes", "memory_total_bytes")), borderColor: "#bf3989" },
    ];
  chart("detail-device", {
    type: "line",
    data: { datasets: datasets.map((d) => ({ ...d, backgroundColor: d.borderColor, pointRadius: 0, borderWidth: 2 })) },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
      scales: {
        x: { type: "linear", title: { display: true, text: "seconds from submission" } },
        y: { min: 0, max: 100, title: { display: true, text: "%" } },
      },
      plugins: { legend: { labels: { boxWidth: 12, boxHeight: 2 } } },
    },
  });
}

function drawStory(story) {
  const job = story.job;
  $("detail-id").textContent = job.job_id.slice(0, 12);
  $("detail-id").title = job.job_id;
  const status = $("detail-status");
  status.textContent = job.state || "running";
  status.className = `detail-status status-${job.state}`;
  fill($("detail-facts"), [
    ["Parameters", params(job.params)],
    ["Asked for", story.degraded ? params(story.degraded.requested) : null],
    ["Where", `${job.host} · ${job.gpu === "cpu" ? "CPU" : `GPU ${job.gpu}`}`],
    ["Submitted", h.dateTime(job.submitted_at)],
    ["Waited", job.queued_s != null ? h.seconds(job.queued_s) : null],
    ["Ran", job.run_s != null ? h.seconds(job.run_s) : null],
    ["Peak memory", job.peak_memory_bytes != null ? h.bytes(job.peak_memory_bytes) : null],
    ["Prompt", job.prompt],
  ]);
  const notes = $("detail-notes");
  notes.replaceChildren(...(story.notes || []).map((n) => h.el("li", { text: n })));
  if (story.degraded) notes.prepend(h.el("li", { class: "degraded", text: `Degraded from ${params(story.degraded.requested)} to ${params(story.degraded.effective)}.` }));
  if (job.error) notes.append(h.el("li", { class: "error", text: `${job.error}${job.suggestion ? ` — ${job.suggestion}` : ""}` }));
  $("detail-notes-none").hidden = notes.children.length > 0;
  const origin = Date.parse(story.timeline.origin);
  drawTimeline(story.timeline);
  drawDevice(story.device, origin);
  const quality = story.quality;
  const shown = (key) => (key === "parts_used" && quality[key] ? quality[key].split(",").join(", ") : number(quality[key]));
  fill($("detail-quality"), quality ? QUALITY.map(([key, label]) => [label, shown(key)]) : []);
  $("detail-quality-none").hidden = Boolean(quality && (quality.combined != null || quality.status));
  $("detail-quality-none").textContent = quality ? "" : "Not scored (no quality record for this job).";
  if (quality && quality.status && quality.status !== "scored") {
    $("detail-quality-none").hidden = false;
    $("detail-quality-none").textContent = `Quality: ${quality.status}${quality.unscorable_reason ? ` (${quality.unscorable_reason})` : ""}.`;
  }
  const cost = story.cost;
  const priced = cost.prices.per_kwh !== null || cost.prices.per_gpu_hour !== null;
  fill($("detail-cost"), [
    ["GPU time", cost.gpu_seconds != null ? h.seconds(cost.gpu_seconds) : "none (CPU)"],
    ["GPU energy", energyText(cost.energy_j) || (job.gpu === "cpu" ? "not measured on a CPU" : "not measured yet")],
    ["Energy cost", cost.energy_cost],
    ["GPU-time cost", cost.gpu_time_cost],
    ["Cost", cost.cost ?? (priced ? null : "no price configured (MONITOR_PRICE_PER_KWH, MONITOR_PRICE_PER_GPU_HOUR)")],
  ]);
  const video = $("detail-video");
  if (story.video_url) {
    if (video.getAttribute("src") !== story.video_url) video.src = story.video_url;
    video.hidden = false;
    $("detail-video-none").hidden = true;
    video.play().catch(() => {}); // autoplay may be refused; the controls stay
  } else {
    video.pause();
    video.removeAttribute("src");
    video.hidden = true;
    $("detail-video-none").hidden = false;
  }
}

export async function openJob(jobId) {
  const dialog = $("job-detail");
  opened = jobId;
  $("detail-error").hidden = true;
  if (!dialog.open) dialog.showModal();
  const result = await h.getJSON(`jobs/${encodeURIComponent(jobId)}/story`, { window: "30d" });
  if (opened !== jobId) return;
  if (!result.ok) {
    $("detail-error").hidden = false;
    $("detail-error").textContent = `This job could not be read (${result.status ? `HTTP ${result.status}` : "no answer"}${result.error ? `: ${result.error}` : ""}).`;
    return;
  }
  drawStory(result.body);
  dialog.dataset.job = jobId;
  history.replaceState(null, "", `${location.pathname}${location.search}#job-${jobId}`);
}

function close() {
  const dialog = $("job-detail");
  $("detail-video").pause();
  opened = null;
  delete dialog.dataset.job;
  if (location.hash.startsWith("#job-")) history.replaceState(null, "", `${location.pathname}${location.search}`);
}

export function initJobDetail(helpers) {
  h = helpers;
  const dialog = $("job-detail");
  dialog.addEventListener("close", close);
  $("detail-close").addEventListener("click", () => dialog.close());
  // A click on the backdrop (outside the dialog's box) closes it, as Escape does.
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
  // The jobs table and the fleet panel (a worker's current job) open a job the same way.
  for (const table of ["jobs", "fleet"]) {
    $(table).addEventListener("click", (event) => {
      const button = event.target.closest("button[data-job]");
      if (button) openJob(button.dataset.job);
    });
  }
  if (location.hash.startsWith("#job-")) openJob(decodeURIComponent(location.hash.slice(5)));
}
