// Follows a running build: job statuses and log output, until everything has ended.
(function () {
  "use strict";
  const script = document.getElementById("build-script");
  const buildUrl = script.dataset.buildUrl;
  // The template's URL is for job 0: /api/jobs/0/log.
  const logUrl = (id) => script.dataset.logUrl.replace(/\/0\/log$/, "/" + id + "/log");
  const ACTIVE = new Set(["queued", "running"]);
  let buildStatus = document.getElementById("build-status").textContent.trim();

  async function followLog(section) {
    const pre = section.querySelector("[data-role=log]");
    const response = await fetch(logUrl(section.dataset.jobId) + "?after=" + pre.dataset.after);
    if (!response.ok) return;
    const data = await response.json();
    for (const chunk of data.chunks) {
      pre.append(chunk.text);
      pre.dataset.after = chunk.seq;
    }
    if (data.chunks.length) pre.scrollTop = pre.scrollHeight;
  }

  async function refresh() {
    const response = await fetch(buildUrl);
    if (!response.ok) return;
    const build = await response.json();
    const known = document.querySelectorAll("section.job");
    if (build.jobs.length !== known.length) { window.location.reload(); return; }
    for (const job of build.jobs) {
      const section = document.querySelector(`section.job[data-job-id="${job.id}"]`);
      if (!section) continue;
      if (ACTIVE.has(section.dataset.status) || ACTIVE.has(job.status)) await followLog(section);
      const badge = section.querySelector("[data-role=status]");
      badge.textContent = job.status;
      badge.className = "badge " + job.status;
      section.dataset.status = job.status;
      section.querySelector("[data-role=message]").textContent = job.message;
    }
    const badge = document.getElementById("build-status");
    badge.textContent = build.status;
    badge.className = "badge " + build.status;
    document.getElementById("build-message").textContent = build.message;
    buildStatus = build.status;
  }

  async function loop() {
    try { await refresh(); } catch (e) { /* the server restarted: try again */ }
    if (ACTIVE.has(buildStatus)) setTimeout(loop, 1000);
  }
  if (ACTIVE.has(buildStatus)) loop();
})();
