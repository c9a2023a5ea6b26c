// The generator page: check the form against the server's own bounds, pre-fill the monitor's recommendation,
// submit, follow the job as the server pushes its progress (Server-Sent Events; the status API is polled where
// a stream cannot be had), play the clip or show the failure, and let the submitter rate the clip.

const $ = (id) => document.getElementById(id);
const bounds = JSON.parse($("bounds").textContent);
const form = $("job-form");
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"];
const INTEGER_FIELDS = ["num_frames", "steps", "fps", "seed"];
const FINAL = ["succeeded", "failed", "cancelled"];
const POLL_MS = 500;

let currentJob = null;
let ratingToken = null; // the submitter's token for this job: it lets them rate the clip
let timer = null;
let stream = null;
let triedSubmit = false;
const touched = new Set(); // fields the user changed: the recommendation never overwrites them

function mb(bytesValue) { return `${Math.round(bytesValue / 2 ** 20)} MB`; }
$("max-upload").textContent = mb(bounds.max_upload_bytes);

// ---- validation: the same rules as generator/validation.py -------------------------------------------------

function checkNumber(name, raw) {
  const [low, high] = bounds.limits[name];
  if (raw === "" || raw === null) return name === "seed" ? null : `${name.replace("_", " ")} is required`;
  const value = Number(raw);
  const integer = INTEGER_FIELDS.includes(name);
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    return `must be ${integer ? "a whole number" : "a number"}`;
  }
  if (value < low || value > high) return `must be between ${low} and ${high}`;
  return null;
}

function fieldErrors() {
  const errors = {};
  const file = $("image").files[0];
  if (!file) errors.image = "choose an image (PNG, JPEG or WebP)";
  else if (file.type && !IMAGE_TYPES.includes(file.type)) errors.image = "must be a PNG, JPEG or WebP image";
  else if (file.size > bounds.max_upload_bytes) errors.image = `is ${mb(file.size)}: at most ${mb(bounds.max_upload_bytes)}`;
  const prompt = $("prompt").value.trim();
  if (!prompt) errors.prompt = "describe the motion you want";
  else if (prompt.length > bounds.max_prompt) errors.prompt = `is ${prompt.length} characters: at most ${bounds.max_prompt}`;
  // eslint-disable-next-line no-control-regex
  else if (/[\u0000-\u0008\u000b-\u001f]/.test(prompt)) errors.prompt = "must not contain control characters";
  if (!bounds.resolutions.includes(Number($("resolution").value))) {
    errors.resolution = `must be one of ${bounds.resolutions.join(", ")}`;
  }
  for (const name of Object.keys(bounds.limits)) {
    const message = checkNumber(name, $(name).value.trim());
    if (message) errors[name] = message;
  }
  return errors;
}

function showErrors(errors, only = null) {
  for (const name of ["image", "prompt", "resolution", ...Object.keys(bounds.limits)]) {
    if (only && !only.has(name)) continue;
    const message = errors[name] || "";
    $(`${name}-error`).textContent = message;
    $(name).setAttribute("aria-invalid", String(Boolean(message)));
  }
}

form.addEventListener("input", (event) => {
  if (!event.target.name) return;
  touched.add(event.target.name);
  // Before the first submit, only the field being edited is checked, so the empty form does not shout.
  showErrors(fieldErrors(), triedSubmit ? null : new Set([event.target.name]));
});

// ---- the recommendation -------------------------------------------------------------------------------------

async function loadRecommendation() {
  const note = $("recommendation");
  let body = null;
  let why = "the monitor is not reachable";
  try {
    const response = await fetch("/api/recommendation", { headers: { Accept: "application/json" } });
    body = await response.json().catch(() => null);
    if (!response.ok) {
      why = (body && body.error) || `HTTP ${response.status}`;
      body = null;
    }
  } catch { body = null; }
  const rec = body && (body.recommended || body.recommendation || body);
  if (!rec || rec.resolution === undefined) {
    note.textContent = `No recommendation available right now (${why}); the defaults are shown.`;
    note.dataset.state = "unavailable";
    return;
  }
  const applied = [];
  for (const name of ["resolution", "num_frames", "steps"]) {
    const value = rec[name];
    if (value === undefined || value === null || touched.has(name)) continue;
    const valid = name === "resolution" ? bounds.resolutions.includes(Number(value)) : checkNumber(name, String(value)) === null;
    if (!valid) continue;
    $(name).value = String(value);
    applied.push(name);
  }
  const predicted = body.predicted && body.predicted.time_s != null ? `, about ${duration(body.predicted.time_s)}` : "";
  // On a CPU the advice is time-based (what finishes within the budget); on a GPU memory-based.
  const where = body.basis === "time" ? "this CPU" : `this GPU${body.gpu && body.gpu.model ? ` (${body.gpu.model})` : ""}`;
  const reason = body.reason ? ` ${body.reason[0].toUpperCase()}${body.reason.slice(1)}.` : "";
  note.textContent = `Recommended for ${where}: ${rec.resolution}x${rec.resolution}, ${rec.num_frames} frames, ${rec.steps} steps${predicted}.${reason}`;
  note.dataset.state = applied.length ? "applied" : "shown";
}

// ---- the viewer token: sign in when the generator asks for it ----------------------------------------------

// The session is an HttpOnly cookie the server sets: this script never holds the token after sending it.
function askToSignIn(message = "") {
  $("sign-in").hidden = false;
  form.hidden = true;
  $("sign-in-error").textContent = message;
  $("viewer-token").focus();
}

async function checkSession() {
  if (!bounds.viewer_token_required) return;
  try {
    const response = await fetch("/api/session", { cache: "no-store" });
    if (response.status === 401) askToSignIn();
  } catch { /* the generator is away: the form's own errors say so when it is used */ }
}

$("sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("viewer-token").value;
  let response;
  try {
    response = await fetch("/api/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
    });
  } catch {
    $("sign-in-error").textContent = "The generator did not answer; try again in a moment.";
    return;
  }
  if (!response.ok) {
    $("sign-in-error").textContent = response.status === 401 ? "That is not this generator's viewer token." : `Refused (HTTP ${response.status})`;
    return;
  }
  $("viewer-token").value = "";
  $("sign-in").hidden = true;
  form.hidden = false;
  if (currentJob && !timer) timer = setTimeout(poll, POLL_MS);
});

// ---- following a job ----------------------------------------------------------------------------------------

function duration(s) {
  if (s === null || s === undefined) return null;
  if (s < 60) return `${Math.max(1, Math.round(s))} s`;
  return `${Math.floor(s / 60)} min ${pad(Math.round(s % 60))} s`;
}
function pad(n) { return String(n).padStart(2, "0"); }
function elapsedS(start, end) { return typeof start === "number" ? end - start : (Date.parse(end) - Date.parse(start)) / 1000; }

function render(job) {
  // 100% means the clip is ready: after the last denoising step the clip is still decoded and saved.
  const ratio = job.state === "succeeded" ? 1 : Math.min(job.progress.ratio || 0, 0.99);
  $("progress").value = ratio;
  $("progress-label").textContent = `${Math.round(ratio * 100)}%`;
  const eta = duration(job.eta_s);
  let text = job.state;
  if (job.state === "queued") {
    text = `Queued${job.position ? `, position ${job.position}` : ""}${eta ? ` · done in about ${eta}` : ""}`;
  } else if (job.state === "running") {
    const { step, total_steps: total } = job.progress;
    const doing = step >= total && total ? "decoding and saving the clip" : `step ${step} of ${total}`;
    text = `Running · ${doing}${eta ? ` · about ${eta} left` : ""}`;
  } else if (job.state === "succeeded") {
    const took = job.started_at && job.finished_at ? duration(elapsedS(job.started_at, job.finished_at)) : null;
    text = `Done${took ? ` in ${took}` : ""}`;
  } else if (job.state === "failed") {
    text = "Failed";
  } else if (job.state === "cancelled") {
    text = "Cancelled";
  }
  $("job-state").textContent = text;
  $("job-state").dataset.state = job.state;
  const notes = job.notes || [];
  $("job-notes").hidden = !notes.length;
  $("job-notes").textContent = notes.join(" ");
  const failed = job.state === "failed" || (job.state === "cancelled" && job.error);
  $("job-failure").hidden = !failed;
  $("job-error").textContent = failed ? job.error || "The job failed." : "";
  $("job-suggestion").textContent = failed && job.suggestion ? `Suggestion: ${job.suggestion}` : "";
  $("job-suggestion").hidden = !(failed && job.suggestion);
  $("cancel").hidden = FINAL.includes(job.state);
  if (job.state === "succeeded" && job.video_url && $("video").dataset.job !== job.job_id) {
    const video = $("video");
    video.dataset.job = job.job_id;
    video.src = job.video_url;
    video.hidden = false;
    video.play().catch(() => {}); // autoplay may be refused; the controls stay
  }
  $("rating").hidden = !(job.state === "succeeded" && ratingToken && job.job_id === currentJob);
}

// ---- pushed progress, with polling where a stream cannot be had ---------------------------------------------

function follow(jobId) {
  if (!window.EventSource) {
    followByPolling();
    return;
  }
  const source = new EventSource(`/api/jobs/${jobId}/events`);
  stream = source;
  $("job").dataset.transport = "events";
  const onEvent = (event) => {
    if (jobId !== currentJob) return;
    const job = JSON.parse(event.data);
    render(job);
    if (FINAL.includes(job.state)) stopFollowing();
  };
  source.addEventListener("state", onEvent);
  source.addEventListener("progress", onEvent);
  source.addEventListener("gone", () => {
    stopFollowing();
    $("job-state").textContent = "This job is no longer kept by the generator.";
  });
  source.onerror = () => {
    // EventSource reconnects by itself (with Last-Event-ID) after a dropped connection; only a refused stream
    // (the server's stream slots are full, or it does not stream) ends it, and then the page polls instead.
    if (source.readyState === EventSource.CLOSED && stream === source && jobId === currentJob) followByPolling();
  };
}

function followByPolling() {
  if (stream) stream.close();
  stream = null;
  $("job").dataset.transport = "polling";
  clearTimeout(timer);
  timer = setTimeout(poll, POLL_MS);
}

async function poll() {
  if (!currentJob) return;
  const jobId = currentJob;
  try {
    const response = await fetch(`/api/jobs/${jobId}`, { cache: "no-store" });
    const job = await response.json();
    if (jobId !== currentJob) return;
    if (response.status === 401) {
      stopFollowing();
      askToSignIn("Your session ended: sign in again to follow the job.");
      return;
    }
    if (!response.ok) {
      $("job-state").textContent = job.error || `the status API answered ${response.status}`;
    } else {
      render(job);
      if (FINAL.includes(job.state)) {
        stopFollowing();
        return;
      }
    }
  } catch {
    $("job-state").textContent = "Lost contact with the generator; retrying…";
  }
  timer = setTimeout(poll, POLL_MS);
}

function stopFollowing() {
  clearTimeout(timer);
  timer = null;
  if (stream) stream.close();
  stream = null;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  triedSubmit = true;
  $("form-error").textContent = "";
  const errors = fieldErrors();
  showErrors(errors);
  const first = Object.keys(errors)[0];
  if (first) {
    $("form-error").textContent = `Check ${Object.keys(errors).length === 1 ? "the highlighted field" : "the highlighted fields"}.`;
    $(first).focus();
    return;
  }
  const data = new FormData(form);
  data.set("prompt", $("prompt").value.trim());
  if (!data.get("seed")) data.delete("seed");
  $("submit").disabled = true;
  let response;
  let body = {};
  try {
    response = await fetch("/api/jobs", { method: "POST", body: data });
    body = await response.json().catch(() => ({}));
  } catch {
    $("form-error").textContent = "The generator did not answer; try again in a moment.";
    return;
  } finally {
    $("submit").disabled = false;
  }
  if (response.status === 401) {
    askToSignIn("Sign in to generate: this generator needs its viewer token.");
    return;
  }
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    $("form-error").textContent = `${body.error || `Refused (HTTP ${response.status})`}${retry ? ` Try again in about ${retry} s.` : ""}`;
    if (body.field && $(`${body.field}-error`)) {
      showErrors({ [body.field]: body.error }, new Set([body.field]));
      $(body.field).focus();
    }
    return;
  }
  stopFollowing();
  currentJob = body.job_id;
  ratingToken = body.rating_token || null;
  resetRating();
  $("job").hidden = false;
  $("job-id").textContent = currentJob.slice(0, 12);
  $("job-id").title = currentJob;
  const video = $("video");
  video.hidden = true;
  video.removeAttribute("src");
  delete video.dataset.job;
  render(body);
  follow(currentJob);
});

// ---- rating the clip ----------------------------------------------------------------------------------------

const RATING_RETRIES = 5; // the monitor hears of the clip within a second or two of its end
let ratingTimer = null;

function showStars(value) {
  for (const label of document.querySelectorAll("#stars label")) {
    const n = Number(label.htmlFor.replace("star-", ""));
    label.classList.toggle("on", n <= value);
  }
}

function resetRating() {
  clearTimeout(ratingTimer);
  for (const input of document.querySelectorAll("#stars input")) input.checked = false;
  showStars(0);
  $("rating-status").textContent = "";
  delete $("rating-status").dataset.state;
}

async function sendRating(jobId, stars, attempt = 1) {
  const status = $("rating-status");
  status.textContent = "Saving your rating…";
  status.dataset.state = "saving";
  let response;
  let body = {};
  try {
    response = await fetch(`/api/jobs/${jobId}/rating`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${ratingToken}` },
      body: JSON.stringify({ stars }),
    });
    body = await response.json().catch(() => ({}));
  } catch {
    response = null;
  }
  if (jobId !== currentJob) return;
  if (response && response.status === 404 && attempt < RATING_RETRIES) {
    ratingTimer = setTimeout(() => sendRating(jobId, stars, attempt + 1), 1500);
    return;
  }
  if (!response || !response.ok) {
    status.textContent = `Your rating was not saved: ${(body && body.error) || "the generator did not answer"}.`;
    status.dataset.state = "error";
    return;
  }
  const combined = typeof body.combined === "number" ? ` Combined quality now ${body.combined.toFixed(2)}${body.parts_used ? ` (${body.parts_used})` : ""}.` : "";
  status.textContent = `Rated ${stars} star${stars > 1 ? "s" : ""}. Thank you!${combined}`;
  status.dataset.state = "saved";
}

$("rating").addEventListener("change", (event) => {
  const stars = Number(event.target.value);
  if (!currentJob || !ratingToken || !stars) return;
  showStars(stars);
  // Arrow keys move through the stars one change at a time: only the one the user stops on is sent.
  clearTimeout(ratingTimer);
  const jobId = currentJob;
  ratingTimer = setTimeout(() => sendRating(jobId, stars), 400);
});
$("rating").addEventListener("submit", (event) => event.preventDefault());

$("cancel").addEventListener("click", async () => {
  if (!currentJob) return;
  const response = await fetch(`/api/jobs/${currentJob}/cancel`, { method: "POST" });
  if (response.status === 401) {
    $("job-notes").hidden = false;
    $("job-notes").textContent = "Cancelling needs the admin token on this generator; ask an operator.";
  }
});

checkSession();
loadRecommendation();
