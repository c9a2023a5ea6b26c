// The generator page: submit a job, follow its progress from the status API, play the result.
const $ = (id) => document.getElementById(id);
let currentJob = null;
let timer = null;

function describe(job) {
  const parts = [];
  if (job.state === "queued" && job.position) parts.push(`position ${job.position} in the queue`);
  if (job.state === "running") parts.push(`step ${job.progress.step} of ${job.progress.total_steps}`);
  if (job.eta_s !== null && job.eta_s !== undefined) parts.push(`about ${Math.round(job.eta_s)} s left`);
  if (job.notes && job.notes.length) parts.push(job.notes.join("; "));
  if (job.error) parts.push(`error: ${job.error}`);
  if (job.suggestion) parts.push(`suggestion: ${job.suggestion}`);
  return parts.join(" · ");
}

async function poll() {
  if (!currentJob) return;
  const response = await fetch(`/api/jobs/${currentJob}`);
  const job = await response.json();
  $("job-state").textContent = job.state;
  $("progress").value = job.state === "succeeded" ? 1 : job.progress.ratio;
  $("job-detail").textContent = describe(job);
  $("job-detail").className = job.error ? "error" : "";
  if (["succeeded", "failed", "cancelled"].includes(job.state)) {
    clearInterval(timer);
    $("cancel").hidden = true;
    if (job.video_url) {
      const video = $("video");
      video.src = job.video_url;
      video.hidden = false;
      video.play().catch(() => {});
    }
  }
}

$("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("form-error").textContent = "";
  const form = new FormData(event.target);
  if (!form.get("seed")) form.delete("seed");
  const response = await fetch("/api/jobs", { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) {
    $("form-error").textContent = body.error + (body.allowed ? ` (allowed: ${JSON.stringify(body.allowed)})` : "");
    return;
  }
  currentJob = body.job_id;
  $("job").hidden = false;
  $("job-id").textContent = currentJob;
  $("video").hidden = true;
  $("cancel").hidden = false;
  clearInterval(timer);
  timer = setInterval(poll, 500);
  poll();
});

$("cancel").addEventListener("click", async () => {
  if (currentJob) await fetch(`/api/jobs/${currentJob}/cancel`, { method: "POST" });
  poll();
});
