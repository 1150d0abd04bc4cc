// ChronoSync dashboard: plain ES2020, no libraries, no build step.
//
// It reads the same JSON API as every other client (the token travels in the
// chronosync_token cookie the sign-in page sets). Everything the server sends is shown
// with textContent or set as a plain attribute value, never parsed as HTML: commands and
// their output are whatever a user submitted.
//
// Rows are keyed by id and updated in place every refresh, so the page never flickers,
// an open output stays open, and the schedule form (never re-rendered) keeps its input.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const UPCOMING_LIMIT = 50;
  const FAILURE_LIMIT = 10;
  const RECENT_LIMIT = 20;
  const JOB_LIMIT = 100;
  const STRIP_LENGTH = 10;
  const OUTPUT_LINES = 60;
  const OUTPUT_CHARS = 8000;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const KIND_ORDER = { scheduler: 0, coordinator: 1, worker: 2 };
  const STATE_ORDER = { alive: 0, draining: 1, dead: 2 };

  // ---- DOM helpers: text only, never HTML ------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined && child !== false) {
        node.append(child); // a string becomes a text node
      }
    }
    return node;
  }

  function setText(node, value) {
    const text = value === null || value === undefined ? "" : String(value);
    if (node.textContent !== text) node.textContent = text;
  }

  function setAttr(node, name, value) {
    if (value === null || value === undefined || value === false) {
      node.removeAttribute(name);
    } else if (node.getAttribute(name) !== String(value)) {
      node.setAttribute(name, String(value));
    }
  }

  // Replaces a node's children only when what they say changed (no needless repaint).
  function replaceIfChanged(node, signature, build) {
    if (node.dataset.sig === signature) return;
    node.dataset.sig = signature;
    node.replaceChildren(...build());
  }

  // ---- time: the database's clock, estimated from the data it sends -----------------

  // Heartbeats are written with the database's now(), so the freshest one is a lower
  // bound of the database clock when the answer arrived; the largest such offset over
  // the last half-minute estimates how far the browser's clock is from the database's.
  // Ages and countdowns then come out right even when the browser's clock is off.
  const clock = { samples: [], offset: 0 };

  function noteServerTime(serverMs) {
    if (!Number.isFinite(serverMs)) return;
    clock.samples.push(serverMs - Date.now());
    if (clock.samples.length > 15) clock.samples.shift();
    clock.offset = Math.max(...clock.samples);
  }

  const serverNow = () => Date.now() + clock.offset;
  const ms = (timestamp) => (timestamp ? Date.parse(timestamp) : NaN);

  function fmtDuration(millis) {
    const total = Math.max(0, millis) / 1000;
    if (total < 0.1) return "<0.1s";
    if (total < 10) return `${total.toFixed(1)}s`;
    const s = Math.floor(total);
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${s % 60}s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ${m % 60}m`;
    const d = Math.floor(h / 24);
    if (d < 365) return `${d}d ${h % 24}h`;
    return `${Math.floor(d / 365)}y ${d % 365}d`;
  }

  function fmtRelative(timestamp) {
    const delta = ms(timestamp) - serverNow();
    if (!Number.isFinite(delta)) return "";
    if (Math.abs(delta) < 500) return delta > 0 ? "now" : "just now";
    return delta > 0 ? `in ${fmtDuration(delta)}` : `${fmtDuration(-delta)} ago`;
  }

  const timeOnly = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const dayAndTime = new Intl.DateTimeFormat(undefined, {
    weekday: "short", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const fullDate = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function fmtLocal(timestamp) {
    const when = new Date(ms(timestamp));
    if (Number.isNaN(when.getTime())) return "";
    const today = new Date(serverNow());
    if (when.toDateString() === today.toDateString()) return timeOnly.format(when);
    if (when.getFullYear() === today.getFullYear()) return dayAndTime.format(when);
    return fullDate.format(when);
  }

  // A job's times in the job's own zone ("Tue 1 Dec, 02:30:00 EST"); UTC on hover.
  const zoneFormats = new Map();

  function fmtInZone(timestamp, zone) {
    if (!zoneFormats.has(zone)) {
      let format;
      try {
        format = new Intl.DateTimeFormat(undefined, { timeZone: zone, weekday: "short",
          month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
          second: "2-digit", timeZoneName: "short" });
      } catch (_) { // a zone this browser does not know: UTC, saying so
        format = new Intl.DateTimeFormat(undefined, { timeZone: "UTC", weekday: "short",
          month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
          second: "2-digit", timeZoneName: "short" });
      }
      zoneFormats.set(zone, format);
    }
    const when = new Date(ms(timestamp));
    return Number.isNaN(when.getTime()) ? "" : zoneFormats.get(zone).format(when);
  }

  // "2026-12-01 07:30:00 UTC" from what the API sends ("2026-12-01T07:30:00Z").
  function fmtUtc(timestamp) {
    const when = new Date(ms(timestamp));
    if (Number.isNaN(when.getTime())) return "";
    return `${when.toISOString().replace("T", " ").replace(/\.\d+Z$/, "")} UTC`;
  }

  // A datetime-local value ("2026-12-25T22:34" or with seconds) as RFC 3339 with the
  // browser's offset at that instant ("2026-12-25T22:34:00+01:00").
  function localToRfc3339(value) {
    const match = /^(\d{4,})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?$/.exec(value);
    if (!match) return null;
    const [, y, mo, d, h, mi, s] = match;
    const when = new Date(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi),
      Number(s || 0));
    if (Number.isNaN(when.getTime())) return null;
    const pad = (n, width = 2) => String(n).padStart(width, "0");
    const offset = -when.getTimezoneOffset();
    const sign = offset >= 0 ? "+" : "-";
    const abs = Math.abs(offset);
    return `${pad(when.getFullYear(), 4)}-${pad(when.getMonth() + 1)}-${pad(when.getDate())}` +
      `T${pad(when.getHours())}:${pad(when.getMinutes())}:${pad(when.getSeconds())}` +
      `${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
  }

  // ---- the API ----------------------------------------------------------------------

  class SignedOut extends Error {}
  let reloading = false;

  async function api(path, { method = "GET", body } = {}) {
    const init = { method, headers: { Accept: "application/json" },
      credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      // The token is missing or changed: the page itself now gets the sign-in form.
      if (!reloading) {
        reloading = true;
        window.location.reload();
      }
      throw new SignedOut("signed out");
    }
    let data = null;
    if (response.status !== 204) {
      try {
        data = await response.json();
      } catch (_) {
        data = null;
      }
    }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error
        : `${response.status} ${response.statusText}`;
      const error = new Error(message);
      error.status = response.status;
      error.field = data && typeof data.field === "string" ? data.field : null;
      throw error;
    }
    return data;
  }

  const tasksOf = (path) => api(path).then((data) => data.tasks);

  // ---- notices ----------------------------------------------------------------------

  const notice = document.getElementById("notice");
  let noticeTimer = null;

  function showNotice(text, kind = "error") {
    setText(notice.querySelector(".text"), text);
    notice.dataset.kind = kind;
    notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { notice.hidden = true; }, kind === "error" ? 10000 : 4000);
  }
  notice.querySelector(".close").addEventListener("click", () => { notice.hidden = true; });

  // ---- shared pieces of rows --------------------------------------------------------

  function statusBadge() {
    return el("span", { class: "status" });
  }

  function updateStatus(badge, status, label) {
    setAttr(badge, "data-status", status);
    setText(badge, label || status);
  }

  function commandLine() {
    return el("code", { class: "cmd" });
  }

  function updateCommand(node, command) {
    setText(node, command);
    setAttr(node, "title", command);
  }

  // Meta is a list of short facts: [text, title?, class?, link?]; a link is a page of
  // this dashboard (#/tasks/17), never anything the server sent.
  function updateMeta(node, facts) {
    const kept = facts.filter((fact) => fact && fact[0]);
    replaceIfChanged(node, JSON.stringify(kept), () => kept.map(([text, title, cls, link]) =>
      el(link ? "a" : "span", { class: cls || null, title: title || null, href: link || null,
        text })));
  }

  const taskLink = (id) => `#/tasks/${encodeURIComponent(id)}`;
  const jobLink = (id) => `#/jobs/${encodeURIComponent(id)}`;
  const historyLink = (filters) => `#/tasks?${new URLSearchParams(filters)}`;
  const idFact = (task) => [`#${task.id}`, "open the task", "id", taskLink(task.id)];
  const workerFact = (task) => (task.worker_id
    ? [`on ${shortNode(task.worker_id)}`, "worker: its tasks", "node",
      historyLink({ worker: task.worker_id })] : null);

  function shortNode(id) {
    return id ? String(id) : "";
  }

  function outputBlock() {
    const details = el("details", { class: "output" });
    details.append(el("summary", {}), el("pre", {}));
    return details;
  }

  function updateOutput(details, output) {
    const text = typeof output === "string" ? output.replace(/\n+$/, "") : "";
    details.hidden = text.length === 0;
    if (!text) return;
    let lines = text.split("\n");
    const total = lines.length;
    lines = lines.slice(-OUTPUT_LINES);
    let shown = lines.join("\n");
    if (shown.length > OUTPUT_CHARS) shown = `…${shown.slice(-OUTPUT_CHARS)}`;
    const label = total > lines.length
      ? `Output (last ${lines.length} of ${total} lines)`
      : `Output (${total} line${total === 1 ? "" : "s"})`;
    setText(details.querySelector("summary"), label);
    setText(details.querySelector("pre"), shown);
  }

  function taskRow(withCancel, withOutput, withRetry = false) {
    const row = el("li", { class: "row task" });
    const head = el("div", { class: "head" }, statusBadge(), commandLine());
    row.append(head, el("div", { class: "meta" }));
    if (withCancel) row.append(cancelButton());
    if (withRetry) row.append(retryButton());
    if (withOutput) row.append(outputBlock());
    return row;
  }

  // Finished for good: a cancelled run whose command is still stopping is not (yet).
  function finished(task) {
    return TERMINAL.has(task.status) && !(task.started_at && !task.completed_at && !task.failed_at);
  }

  function updateTaskCore(row, task, label) {
    updateStatus(row.querySelector(".status"), task.status, label);
    updateCommand(row.querySelector(".cmd"), task.command);
    setAttr(row, "data-status", task.status);
    const retry = row.querySelector("button.retry");
    if (retry) retry.hidden = !finished(task);
  }

  function attemptFact(task) {
    return task.max_attempts > 1 ? [`attempt ${task.attempt}/${task.max_attempts}`] : null;
  }

  function jobFact(task) {
    return task.job_id ? [`job #${task.job_id}`, "open the job", "tag", jobLink(task.job_id)] : null;
  }

  function nameFact(task) {
    return task.name ? [task.name, "name", "tag"] : null;
  }

  function retryFact(task) {
    return task.retry_of ? [`retry of #${task.retry_of}`, null, "tag", taskLink(task.retry_of)] : null;
  }

  // ---- buttons ----------------------------------------------------------------------

  let refreshSoon = () => {};
  // Bumped when a change made from the page is sent and when it is answered: a refresh
  // whose reads overlapped a change is dropped and redone, so it never paints the state
  // from before the change over the change's own answer.
  let changes = 0;

  function cancelButton() {
    const button = el("button", { type: "button", class: "small danger cancel", text: "Cancel" });
    let disarm = null;
    button.addEventListener("click", async () => {
      const row = button.closest("[data-key]");
      if (!row || button.disabled) return;
      if (!button.classList.contains("armed")) {
        // A second click confirms: a stray click never cancels a task.
        button.classList.add("armed");
        button.textContent = "Confirm cancel";
        disarm = setTimeout(() => {
          button.classList.remove("armed");
          button.textContent = "Cancel";
        }, 4000);
        return;
      }
      clearTimeout(disarm);
      button.classList.remove("armed");
      button.disabled = true;
      changes += 1;
      button.textContent = "Cancelling…";
      try {
        const task = await api(`/tasks/${encodeURIComponent(row.dataset.key)}/cancel`,
          { method: "POST" });
        showNotice(`Task #${task.id} ${task.status === "cancelled" ? "cancelled" : task.status}.`,
          "info");
        button.disabled = false; // for the task page, where the button stays
        button.textContent = "Cancel";
      } catch (error) {
        if (!(error instanceof SignedOut)) showNotice(`Could not cancel: ${error.message}`);
        button.disabled = false;
        button.textContent = "Cancel";
      }
      changes += 1;
      refreshSoon();
    });
    return button;
  }

  // Retry (a finished task): a new task, due now, with the same command; one click, as
  // the original is left as it was. The button stays disabled until the answer.
  function retryButton() {
    const button = el("button", { type: "button", class: "small retry", text: "Retry", hidden: true });
    button.addEventListener("click", async () => {
      const row = button.closest("[data-key]");
      if (!row || button.disabled) return;
      button.disabled = true;
      changes += 1;
      button.textContent = "Retrying…";
      try {
        const task = await api(`/tasks/${encodeURIComponent(row.dataset.key)}/retry`,
          { method: "POST", body: {} });
        showNotice(`Task #${task.retry_of} retried as task #${task.id}.`, "info");
        if (row.dataset.follow) window.location.hash = taskLink(task.id);
      } catch (error) {
        if (!(error instanceof SignedOut)) showNotice(`Could not retry: ${error.message}`);
      }
      button.disabled = false;
      button.textContent = "Retry";
      changes += 1;
      refreshSoon();
    });
    return button;
  }

  // A button that asks for a second click within 4 s before it acts (delete, cancel).
  function confirming(button, label, armedLabel, act) {
    let disarm = null;
    button.addEventListener("click", async () => {
      if (button.disabled) return;
      if (!button.classList.contains("armed")) {
        button.classList.add("armed");
        button.textContent = armedLabel;
        disarm = setTimeout(() => {
          button.classList.remove("armed");
          button.textContent = label;
        }, 4000);
        return;
      }
      clearTimeout(disarm);
      button.classList.remove("armed");
      await act();
    });
    return button;
  }

  // ---- sections ---------------------------------------------------------------------

  // Brings a section's list in line with items: rows are created once per key, updated
  // in place, moved only when the order changed, removed when gone.
  function reconcile(sectionId, items, { key, create, update, capped = false }) {
    const section = document.getElementById(sectionId);
    const list = section.querySelector("[data-list]");
    const existing = new Map();
    for (const child of list.children) existing.set(child.dataset.key, child);
    items.forEach((item, index) => {
      const id = String(key(item));
      let row = existing.get(id);
      if (row) {
        existing.delete(id);
      } else {
        row = create(item);
        row.dataset.key = id;
      }
      update(row, item);
      const at = list.children[index];
      if (at !== row) list.insertBefore(row, at || null);
    });
    for (const row of existing.values()) row.remove();
    list.hidden = items.length === 0;
    section.querySelector("[data-empty]").hidden = items.length > 0;
    const count = section.querySelector("[data-count]");
    if (count) setText(count, items.length ? `${items.length}${capped ? "+" : ""}` : "");
  }

  function renderUpcoming(tasks) {
    // A task waiting for its next at_least_once attempt is due at next_attempt_at.
    const dueAt = (t) => t.next_attempt_at || t.scheduled_at;
    const sorted = [...tasks].sort((a, b) => ms(dueAt(a)) - ms(dueAt(b)) || a.id - b.id);
    reconcile("upcoming", sorted, {
      key: (t) => t.id,
      capped: tasks.length >= UPCOMING_LIMIT,
      create: () => taskRow(true, false),
      update: (row, t) => {
        updateTaskCore(row, t);
        const at = dueAt(t);
        const due = ms(at) - serverNow();
        const retry = t.status === "retrying" ? "retry " : "";
        updateMeta(row.querySelector(".meta"), [
          idFact(t),
          [due <= 0 ? `${retry}due now` : `${retry}${fmtRelative(at)}`, at, "strong"],
          [fmtLocal(at), at],
          t.status === "retrying" && t.error ? [t.error, "error", "error"] : null,
          attemptFact(t), nameFact(t), jobFact(t), retryFact(t),
        ]);
      },
    });
  }

  function renderRunning(tasks) {
    const since = (t) => ms(t.started_at || t.picked_at);
    const sorted = [...tasks].sort((a, b) => since(a) - since(b) || a.id - b.id);
    reconcile("running", sorted, {
      key: (t) => t.id,
      create: () => taskRow(true, false),
      update: (row, t) => {
        const started = t.status === "running";
        updateTaskCore(row, t, started ? "running" : "starting");
        const elapsed = serverNow() - since(t);
        updateMeta(row.querySelector(".meta"), [
          idFact(t),
          [started ? `running ${fmtDuration(elapsed)}` : `picked ${fmtDuration(elapsed)} ago`,
            t.started_at || t.picked_at, "strong"],
          workerFact(t),
          t.timeout_s ? [`timeout ${fmtDuration(t.timeout_s * 1000)}`] : null,
          attemptFact(t), nameFact(t), jobFact(t), retryFact(t),
        ]);
      },
    });
  }

  function renderFailures(tasks) {
    reconcile("failures", tasks, {
      key: (t) => t.id,
      capped: tasks.length >= FAILURE_LIMIT,
      create: () => taskRow(false, true, true),
      update: (row, t) => {
        updateTaskCore(row, t);
        updateMeta(row.querySelector(".meta"), [
          idFact(t),
          [t.error || "failed", "error", "error"],
          [`failed ${fmtRelative(t.failed_at)}`, t.failed_at, "strong"],
          workerFact(t),
          attemptFact(t), nameFact(t), jobFact(t), retryFact(t),
        ]);
        updateOutput(row.querySelector(".output"), outputs.get(t.id));
      },
    });
  }

  function finishedAt(t) {
    return t.completed_at || t.failed_at || t.cancelled_at;
  }

  function renderRecent(tasks, sectionId = "recent") {
    reconcile(sectionId, tasks, {
      key: (t) => t.id,
      create: () => taskRow(false, true, true),
      update: (row, t) => {
        updateTaskCore(row, t);
        const end = finishedAt(t);
        let when;
        if (end) {
          when = [`${t.status} ${fmtRelative(end)}`, end, "strong"];
        } else if (t.status === "running") {
          when = [`running ${fmtDuration(serverNow() - ms(t.started_at))}`, t.started_at, "strong"];
        } else {
          when = [`due ${fmtRelative(t.scheduled_at)}`, t.scheduled_at, "strong"];
        }
        const took = end && t.started_at ? ms(end) - ms(t.started_at) : NaN;
        updateMeta(row.querySelector(".meta"), [
          idFact(t),
          when,
          Number.isFinite(took) ? [`took ${fmtDuration(took)}`] : null,
          t.status === "failed" && t.error ? [t.error, "error", "error"] : null,
          attemptFact(t), nameFact(t), jobFact(t), retryFact(t),
        ]);
        updateOutput(row.querySelector(".output"), outputs.get(t.id));
      },
    });
  }

  function renderJobs(jobs, outcomes, sectionId = "jobs") {
    const ids = new Set(jobs.map((j) => String(j.id)));
    for (const id of jobsShown.keys()) if (!ids.has(id)) jobsShown.delete(id);
    reconcile(sectionId, jobs, {
      key: (j) => j.id,
      create: () => {
        const toggle = el("button", { type: "button", class: "small toggle" });
        toggle.addEventListener("click", () => togglePause(toggle));
        const run = el("button", { type: "button", class: "small run", text: "Run now" });
        run.addEventListener("click", () => runNow(run));
        const edit = el("button", { type: "button", class: "small edit", text: "Edit" });
        edit.addEventListener("click", () => openEdit(edit.closest("li")));
        const remove = confirming(
          el("button", { type: "button", class: "small danger delete", text: "Delete" }),
          "Delete", "Confirm delete", () => deleteJob(remove));
        const row = el("li", { class: "row job" },
          el("div", { class: "about" },
            el("div", { class: "head" },
              el("a", { class: "name", title: "open the job" }), el("span", { class: "status paused-badge", "data-status": "paused", text: "paused" })),
            commandLine(),
            el("div", { class: "desc" })),
          el("div", { class: "next" }),
          el("div", { class: "history" },
            el("div", { class: "strip", role: "img" }),
            el("div", { class: "strip-label" })),
          el("div", { class: "job-actions" }, run, toggle, edit, remove),
          editForm());
        return row;
      },
      update: (row, j) => {
        jobsShown.set(String(j.id), j);
        row.classList.toggle("paused", Boolean(j.paused));
        row.querySelector(".paused-badge").hidden = !j.paused;
        const name = row.querySelector(".name");
        setText(name, j.name || `job #${j.id}`);
        setAttr(name, "href", jobLink(j.id));
        updateCommand(row.querySelector(".cmd"), j.command);
        const desc = row.querySelector(".desc");
        replaceIfChanged(desc, JSON.stringify([j.description, j.cron, j.timezone]), () => [
          el("span", { class: "words", text: j.description || "" }),
          el("code", { class: "expr", text: j.cron }),
          el("span", { class: "tz", text: j.timezone }),
        ]);
        const runs = Array.isArray(j.next_runs) ? j.next_runs.slice(0, 3) : [];
        const next = row.querySelector(".next");
        replaceIfChanged(next, JSON.stringify([runs, j.paused, j.timezone,
          runs.length && fmtRelative(runs[0])]),
          () => runs.length === 0 ? [el("span", { class: "label", text: "No further runs" })] : [
            el("span", { class: "label", text: j.paused ? "Paused; would run" : "Next runs" }),
            el("ol", {}, ...runs.map((run, i) => el("li", { class: "next-run" },
              el("time", { datetime: run, title: fmtUtc(run), text: fmtInZone(run, j.timezone) }),
              i === 0 ? el("span", { class: "rel", text: fmtRelative(run) }) : null))),
          ]);
        const toggle = row.querySelector(".toggle");
        if (!toggle.disabled) setText(toggle, j.paused ? "Resume" : "Pause");
        toggle.dataset.paused = j.paused ? "true" : "false";
        updateStrip(row, outcomes.get(j.id));
      },
    });
  }

  function updateStrip(row, tasks) {
    const strip = row.querySelector(".strip");
    const label = row.querySelector(".strip-label");
    if (!tasks) return; // this refresh could not read them: keep what is shown
    const done = tasks.filter((t) => TERMINAL.has(t.status) || t.status === "running")
      .slice(0, STRIP_LENGTH).reverse(); // oldest on the left, newest on the right
    replaceIfChanged(strip, JSON.stringify(done.map((t) => [t.id, t.status])), () => {
      const cells = done.map((t) => el("span", {
        class: "cell", "data-status": t.status, "data-task-id": t.id,
        title: `#${t.id} ${t.status}${t.error ? ` (${t.error})` : ""}` +
          ` · ${t.scheduled_at || ""}`,
      }));
      for (let i = done.length; i < STRIP_LENGTH; i += 1) {
        cells.unshift(el("span", { class: "cell", "data-status": "none" }));
      }
      return cells;
    });
    const count = (status) => done.filter((t) => t.status === status).length;
    const parts = [["succeeded", "ok"], ["failed", "failed"], ["cancelled", "cancelled"],
      ["running", "running"]].map(([status, word]) => [count(status), word])
      .filter(([n]) => n > 0).map(([n, word]) => `${n} ${word}`);
    const summary = done.length === 0 ? "no runs yet" : `last ${done.length}: ${parts.join(", ")}`;
    setText(label, summary);
    setAttr(strip, "aria-label", `Recent outcomes, ${summary}`);
  }

  const jobsShown = new Map(); // id -> the job as last read, for its edit form

  async function runNow(button) {
    const row = button.closest("li");
    if (!row || button.disabled) return;
    button.disabled = true;
    changes += 1;
    setText(button, "Starting…");
    try {
      const task = await api(`/jobs/${encodeURIComponent(row.dataset.key)}/run`,
        { method: "POST", body: {} });
      showNotice(`Job #${task.job_id} runs now: task #${task.id}.`, "info");
    } catch (error) {
      if (!(error instanceof SignedOut)) showNotice(`Could not run now: ${error.message}`);
    }
    button.disabled = false;
    setText(button, "Run now");
    changes += 1;
    refreshSoon();
  }

  async function deleteJob(button) {
    const row = button.closest("li");
    if (!row) return;
    button.disabled = true;
    changes += 1;
    setText(button, "Deleting…");
    try {
      await api(`/jobs/${encodeURIComponent(row.dataset.key)}`, { method: "DELETE" });
      showNotice(`Job #${row.dataset.key} deleted; the tasks it made stay.`, "info");
      row.remove();
    } catch (error) {
      if (!(error instanceof SignedOut)) showNotice(`Could not delete: ${error.message}`);
      button.disabled = false;
      setText(button, "Delete");
    }
    changes += 1;
    refreshSoon();
  }

  // The edit form of a job row: the fields a PATCH may change that a person edits here.
  // Refreshes never touch it, so what is typed stays while the row updates around it.
  const EDITED = ["name", "command", "cron", "timezone", "concurrency_policy"];

  function editForm() {
    const input = (name, label) => el("label", { class: "field" }, el("span", { text: label }),
      el("input", { type: "text", name, autocomplete: "off", spellcheck: "false" }));
    const policy = el("select", { name: "concurrency_policy" },
      ...["allow", "forbid", "replace"].map((p) => el("option", { value: p, text: p })));
    const form = el("form", { class: "job-edit", hidden: true, novalidate: true },
      input("name", "Name"), input("command", "Command"), input("cron", "Cron expression"),
      input("timezone", "Time zone"),
      el("label", { class: "field" }, el("span", { text: "Concurrency" }), policy),
      el("div", { class: "actions" },
        el("button", { type: "submit", class: "small primary save", text: "Save" }),
        el("button", { type: "button", class: "small discard", text: "Cancel" }),
        el("p", { class: "message", role: "status" })));
    form.querySelector(".discard").addEventListener("click", () => { form.hidden = true; });
    form.addEventListener("input", (event) => event.target.removeAttribute("aria-invalid"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      saveEdit(form);
    });
    return form;
  }

  function openEdit(row) {
    const job = row && jobsShown.get(row.dataset.key);
    if (!job) return;
    const form = row.querySelector(".job-edit");
    for (const name of EDITED) {
      const field = form.elements.namedItem(name);
      field.value = job[name] === null || job[name] === undefined ? "" : String(job[name]);
      field.removeAttribute("aria-invalid");
    }
    form.querySelector(".message").textContent = "";
    form.hidden = false;
    form.elements.namedItem("command").focus();
  }

  async function saveEdit(form) {
    const row = form.closest("li");
    const job = jobsShown.get(row.dataset.key);
    const message = form.querySelector(".message");
    const save = form.querySelector(".save");
    const patch = {};
    for (const name of EDITED) {
      const value = form.elements.namedItem(name).value.trim();
      const was = job[name] === null || job[name] === undefined ? "" : String(job[name]);
      if (value !== was) patch[name] = name === "name" && value === "" ? null : value;
    }
    if (Object.keys(patch).length === 0) {
      form.hidden = true;
      return;
    }
    save.disabled = true;
    changes += 1;
    try {
      const saved = await api(`/jobs/${encodeURIComponent(row.dataset.key)}`,
        { method: "PATCH", body: patch });
      jobsShown.set(String(saved.id), saved);
      form.hidden = true;
      showNotice(`Job #${saved.id} saved.`, "info");
    } catch (error) {
      if (!(error instanceof SignedOut)) {
        message.dataset.kind = "error";
        setText(message, error.message);
        const field = error.field && form.elements.namedItem(error.field);
        if (field) {
          field.setAttribute("aria-invalid", "true");
          field.focus();
        }
      }
    }
    save.disabled = false;
    changes += 1;
    refreshSoon();
  }

  async function togglePause(button) {
    const row = button.closest("li");
    if (!row || button.disabled) return;
    const pause = button.dataset.paused !== "true";
    button.disabled = true;
    changes += 1;
    setText(button, pause ? "Pausing…" : "Resuming…");
    try {
      const job = await api(`/jobs/${encodeURIComponent(row.dataset.key)}`,
        { method: "PATCH", body: { paused: pause } });
      button.disabled = false;
      row.classList.toggle("paused", Boolean(job.paused));
      row.querySelector(".paused-badge").hidden = !job.paused;
      button.dataset.paused = job.paused ? "true" : "false";
      setText(button, job.paused ? "Resume" : "Pause");
    } catch (error) {
      button.disabled = false;
      setText(button, pause ? "Pause" : "Resume");
      if (!(error instanceof SignedOut)) showNotice(`Could not ${pause ? "pause" : "resume"}: ${error.message}`);
    }
    changes += 1;
    refreshSoon();
  }

  function renderNodes(nodes) {
    const sorted = [...nodes].sort((a, b) =>
      (KIND_ORDER[a.kind] ?? 9) - (KIND_ORDER[b.kind] ?? 9)
      || (STATE_ORDER[a.state] ?? 9) - (STATE_ORDER[b.state] ?? 9)
      || String(a.id).localeCompare(String(b.id)));
    reconcile("nodes", sorted, {
      key: (n) => n.id,
      create: () => el("li", { class: "row node" },
        el("div", { class: "head" }, statusBadge(), el("strong", { class: "kind" }),
          el("a", { class: "node-id" })),
        el("div", { class: "meta" }),
        el("ul", { class: "labels", "aria-label": "Labels" }),
        el("div", { class: "load" },
          el("div", { class: "bar" }, el("span", { class: "fill" })),
          el("span", { class: "load-label" }))),
      update: (row, n) => {
        updateStatus(row.querySelector(".status"), n.state);
        setAttr(row, "data-state", n.state);
        setText(row.querySelector(".kind"), n.kind);
        const id = row.querySelector(".node-id");
        setText(id, n.id);
        setAttr(id, "title", n.kind === "worker" ? `${n.id}: its tasks` : n.id);
        setAttr(id, "href", n.kind === "worker" ? historyLink({ worker: n.id }) : null);
        const beat = serverNow() - ms(n.last_heartbeat_at);
        updateMeta(row.querySelector(".meta"), [
          [`${n.host}:${n.pid}`, n.address ? `listens on ${n.address}` : null],
          [`heartbeat ${fmtDuration(beat)} ago`, n.last_heartbeat_at, "strong"],
          n.state !== "dead" ? [`up ${fmtDuration(serverNow() - ms(n.started_at))}`, n.started_at] : null,
        ]);
        const labels = Object.entries(n.labels || {});
        const list = row.querySelector(".labels");
        list.hidden = labels.length === 0;
        replaceIfChanged(list, JSON.stringify(labels), () => labels.map(([k, v]) =>
          el("li", { class: "label", text: `${k}=${v}` })));
        const load = row.querySelector(".load");
        const isWorker = n.kind === "worker" && Number.isFinite(n.capacity);
        load.hidden = !isWorker;
        if (isWorker) {
          const share = n.capacity > 0 ? Math.min(1, n.running / n.capacity) : 0;
          const fill = row.querySelector(".fill");
          const width = `${Math.round(share * 100)}%`;
          if (fill.style.width !== width) fill.style.width = width;
          setAttr(fill, "data-level", share >= 0.9 ? "high" : share >= 0.6 ? "mid" : "low");
          setText(row.querySelector(".load-label"), `${n.running}/${n.capacity} busy`);
        }
      },
    });
  }

  function renderCounts(nodes) {
    const alive = { scheduler: 0, coordinator: 0, worker: 0 };
    let dead = 0;
    let running = 0;
    let capacity = 0;
    for (const n of nodes) {
      if (n.state === "dead") {
        dead += 1;
        continue;
      }
      if (n.state === "alive" && n.kind in alive) alive[n.kind] += 1;
      if (n.kind === "worker" && n.state === "alive") {
        running += n.running || 0;
        capacity += n.capacity || 0;
      }
    }
    for (const item of document.querySelectorAll("#node-counts [data-kind]")) {
      const count = alive[item.dataset.kind] || 0;
      setText(item.querySelector(".n"), count);
      setText(item.querySelector(".label"), count === 1 ? item.dataset.kind : `${item.dataset.kind}s`);
      setAttr(item, "data-zero", count === 0 ? "true" : null);
    }
    setText(document.querySelector("#node-counts .slots .n"), `${running}/${capacity}`);
    const deadItem = document.querySelector("#node-counts .dead");
    deadItem.hidden = dead === 0;
    setText(deadItem.querySelector(".n"), dead);
  }

  // ---- pages: #/ the overview, #/tasks?filters the history, #/tasks/17, #/jobs/3 ----

  const HISTORY_LIMIT = 50;
  const JOB_RUNS_LIMIT = 20;
  const FILTERS = ["status", "job_id", "worker", "text"];

  // What the address says to show. A permalink is the whole state: reloading it, or
  // sending it to someone, shows the same page.
  function parseRoute(hash) {
    const [path, search] = hash.replace(/^#/, "").split("?");
    const params = new URLSearchParams(search || "");
    let match = /^\/tasks\/(\d+)$/.exec(path);
    if (match) return { view: "task", id: match[1] };
    match = /^\/jobs\/(\d+)$/.exec(path);
    if (match) return { view: "job", id: match[1] };
    if (path === "/tasks") {
      const filters = {};
      for (const name of FILTERS) {
        const value = params.get(name);
        if (value) filters[name] = value;
      }
      return { view: "tasks", filters, before: params.get("before") || null };
    }
    return { view: "overview" };
  }

  let route = parseRoute(window.location.hash);
  // The pages of history walked through, so "Newer" goes back the way "Older" came.
  let newer = [];

  function showRoute() {
    for (const view of document.querySelectorAll("main.view")) {
      view.hidden = view.dataset.view !== route.view;
    }
    const tab = route.view === "overview" || route.view === "job" ? "overview" : "tasks";
    for (const link of document.querySelectorAll(".views a")) {
      setAttr(link, "aria-current", link.dataset.view === tab ? "page" : null);
    }
    if (route.view === "tasks") fillFilters(route.filters);
    document.title = {
      overview: "ChronoSync", tasks: "Tasks · ChronoSync",
      task: `Task #${route.id} · ChronoSync`, job: `Job #${route.id} · ChronoSync`,
    }[route.view];
  }

  window.addEventListener("hashchange", () => {
    const was = route;
    route = parseRoute(window.location.hash);
    if (route.view !== "tasks" || was.view !== "tasks"
        || JSON.stringify(route.filters) !== JSON.stringify(was.filters)) newer = [];
    if (route.view !== was.view || route.id !== was.id) window.scrollTo(0, 0);
    showRoute();
    tick();
  });

  // A GET whose 404 means "not there (any more)" rather than a failure of the page.
  const orMissing = (promise) => promise.catch((error) => {
    if (error.status === 404) return null;
    throw error;
  });

  // -- the history: filters, a page of 50, newer and older ---------------------------

  const filters = document.getElementById("filters");
  const historyMessage = document.getElementById("history-message");

  function fillFilters(values) {
    for (const name of FILTERS) {
      const field = filters.elements.namedItem(name);
      if (name === "job_id" && values.job_id
          && !field.querySelector(`option[value="${CSS.escape(values.job_id)}"]`)) {
        field.append(el("option", { value: values.job_id, text: `job #${values.job_id}` }));
      }
      field.value = values[name] || "";
      field.removeAttribute("aria-invalid");
    }
  }

  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = {};
    for (const name of FILTERS) {
      const value = filters.elements.namedItem(name).value.trim();
      if (value) chosen[name] = value;
    }
    const hash = historyLink(chosen);
    if (window.location.hash === hash) tick();
    else window.location.hash = hash;
  });
  filters.addEventListener("reset", (event) => {
    event.preventDefault();
    window.location.hash = "#/tasks";
  });
  filters.addEventListener("input", (event) => event.target.removeAttribute("aria-invalid"));

  const pager = document.querySelector("#history .pager");
  let olderCursor = null;
  pager.querySelector(".older").addEventListener("click", () => {
    if (!olderCursor) return;
    newer.push(route.before);
    window.location.hash = historyLink({ ...route.filters, before: olderCursor });
  });
  pager.querySelector(".newer").addEventListener("click", () => {
    const before = newer.length ? newer.pop() : null;
    const saved = newer;
    window.location.hash = historyLink(before ? { ...route.filters, before } : route.filters);
    newer = saved;
  });

  async function readHistory(shown) {
    const params = new URLSearchParams({ ...shown.filters, limit: String(HISTORY_LIMIT) });
    if (shown.before) params.set("before", shown.before);
    const [nodes, jobs, page] = await Promise.all([
      api("/nodes").then((d) => d.nodes),
      api(`/jobs?limit=${JOB_LIMIT}`).then((d) => d.jobs),
      api(`/tasks?${params}`).catch((error) => {
        if (error.status === 400) return { refused: error };
        throw error;
      }),
    ]);
    return () => {
      noteNodes(nodes);
      fillChoices(jobs, nodes, shown.filters);
      if (page.refused) {
        historyMessage.dataset.kind = "error";
        setText(historyMessage, page.refused.message);
        const field = page.refused.field && filters.elements.namedItem(page.refused.field);
        if (field) field.setAttribute("aria-invalid", "true");
        renderHistory([], null, shown);
        return;
      }
      setText(historyMessage, "");
      renderHistory(page.tasks, page.next, shown);
    };
  }

  function fillChoices(jobs, nodes, chosen) {
    const select = filters.elements.namedItem("job_id");
    const options = [["", "any"], ...jobs.map((j) => [String(j.id), j.name || `job #${j.id}`])];
    if (chosen.job_id && !jobs.some((j) => String(j.id) === chosen.job_id)) {
      options.push([chosen.job_id, `job #${chosen.job_id}`]);
    }
    replaceIfChanged(select, JSON.stringify(options), () => options.map(([value, text]) =>
      el("option", { value, text })));
    select.value = chosen.job_id || "";
    const workers = nodes.filter((n) => n.kind === "worker").map((n) => n.id).sort();
    const list = document.getElementById("worker-ids");
    replaceIfChanged(list, JSON.stringify(workers), () => workers.map((id) =>
      el("option", { value: id })));
  }

  function renderHistory(tasks, next, shown) {
    olderCursor = next;
    pager.querySelector(".older").disabled = !next;
    pager.querySelector(".newer").disabled = !shown.before;
    setText(pager.querySelector(".page-label"), tasks.length
      ? `#${tasks[0].id} to #${tasks[tasks.length - 1].id}` : "");
    reconcile("history", tasks, {
      key: (t) => t.id,
      capped: Boolean(next),
      create: () => taskRow(false, false),
      update: (row, t) => {
        updateTaskCore(row, t);
        const end = finishedAt(t);
        const took = end && t.started_at ? ms(end) - ms(t.started_at) : NaN;
        updateMeta(row.querySelector(".meta"), [
          idFact(t),
          end ? [`${t.status} ${fmtLocal(end)}`, fmtUtc(end), "strong"]
            : t.started_at ? [`started ${fmtLocal(t.started_at)}`, fmtUtc(t.started_at), "strong"]
              : [`due ${fmtLocal(t.scheduled_at)}`, fmtUtc(t.scheduled_at), "strong"],
          Number.isFinite(took) ? [`took ${fmtDuration(took)}`] : null,
          t.error ? [t.error, "error", "error"] : null,
          workerFact(t), attemptFact(t), nameFact(t), jobFact(t), retryFact(t),
        ]);
      },
    });
  }

  // -- one task: its timings, attempts, output and where it ran ----------------------

  const taskCard = document.getElementById("task");
  const taskDetail = taskCard.querySelector("[data-detail]");
  const taskActions = taskCard.querySelector(".task-actions");
  taskActions.append(cancelButton(), retryButton());
  taskDetail.dataset.follow = "true"; // a retry from here opens the new task

  async function readTask(shown) {
    const [nodes, task] = await Promise.all([
      api("/nodes").then((d) => d.nodes),
      orMissing(api(`/tasks/${encodeURIComponent(shown.id)}`)),
    ]);
    return () => {
      noteNodes(nodes);
      renderTask(shown.id, task, nodes);
    };
  }

  // A time as a fact: the browser's local time, UTC on hover, and how long ago.
  function timeValue(timestamp) {
    return el("time", { datetime: timestamp, title: fmtUtc(timestamp) },
      `${fmtLocal(timestamp)} · ${fmtRelative(timestamp)}`);
  }

  function labelList(labels, cls) {
    const entries = Object.entries(labels || {});
    return el("ul", { class: `labels ${cls}` }, ...entries.map(([k, v]) =>
      el("li", { class: "label", text: `${k}=${v}` })));
  }

  function link(href, text, title) {
    return el("a", { href, title: title || null, text });
  }

  function taskFacts(task, nodes) {
    const end = finishedAt(task);
    const worker = task.worker_id && nodes.find((n) => n.id === task.worker_id);
    const facts = [
      ["Status", `${task.status}${task.waiting ? ` (${task.waiting})` : ""}`],
      task.name ? ["Name", task.name] : null,
      task.job_id ? ["Job", link(jobLink(task.job_id), `job #${task.job_id}`)] : null,
      task.retry_of ? ["Retry of", link(taskLink(task.retry_of), `task #${task.retry_of}`)] : null,
      ["Delivery", `${task.delivery}, attempt ${task.attempt} of ${task.max_attempts}`],
      task.timeout_s ? ["Timeout", fmtDuration(task.timeout_s * 1000)] : null,
      ["Scheduled", timeValue(task.scheduled_at)],
      task.next_attempt_at ? ["Next attempt", timeValue(task.next_attempt_at)] : null,
      ["Created", timeValue(task.created_at)],
      task.picked_at ? ["Picked", timeValue(task.picked_at)] : null,
      task.started_at ? ["Started", timeValue(task.started_at)] : null,
      task.started_at ? ["Waited", fmtDuration(ms(task.started_at) - ms(task.scheduled_at))] : null,
      task.completed_at ? ["Completed", timeValue(task.completed_at)] : null,
      task.failed_at ? ["Failed", timeValue(task.failed_at)] : null,
      task.cancelled_at ? ["Cancelled", timeValue(task.cancelled_at)] : null,
      task.started_at ? [end ? "Took" : "Running for",
        fmtDuration((end ? ms(end) : serverNow()) - ms(task.started_at))] : null,
      task.exit_code !== null && task.exit_code !== undefined ? ["Exit code", String(task.exit_code)] : null,
      task.error ? ["Error", task.error] : null,
      task.worker_id ? ["Worker", link(historyLink({ worker: task.worker_id }), task.worker_id,
        "this worker's tasks")] : null,
      task.worker_id ? ["Worker labels", worker ? labelList(worker.labels, "worker-labels")
        : "not known: the worker has not been seen in the last hour"] : null,
      task.target ? ["Target", labelList(task.target.labels, "target-labels")] : null,
      task.env && Object.keys(task.env).length
        ? ["Environment", Object.keys(task.env).sort().join(", ")] : null,
      task.idempotency_key ? ["Idempotency key", task.idempotency_key] : null,
    ];
    return facts.filter(Boolean);
  }

  function renderTask(id, task, nodes) {
    setText(taskCard.querySelector(".title"), `#${id}`);
    const missing = taskCard.querySelector("[data-missing]");
    missing.hidden = task !== null;
    taskDetail.hidden = task === null;
    if (task === null) {
      setText(missing, `There is no task #${id}: it may have been pruned by the retention policy.`);
      return;
    }
    taskDetail.dataset.key = String(task.id);
    setAttr(taskDetail, "data-status", task.status);
    updateStatus(taskDetail.querySelector(".status"), task.status);
    setText(taskDetail.querySelector(".cmd"), task.command);
    taskActions.querySelector("button.cancel").hidden = finished(task);
    taskActions.querySelector("button.retry").hidden = !finished(task);
    const facts = taskFacts(task, nodes);
    const dl = taskDetail.querySelector(".facts");
    const signature = JSON.stringify(facts.map(([term, value]) =>
      [term, typeof value === "string" ? value : value.outerHTML]));
    replaceIfChanged(dl, signature, () => facts.flatMap(([term, value]) =>
      [el("dt", { text: term }), el("dd", {}, value)]));
    const attempts = task.attempts || [];
    const body = taskDetail.querySelector(".attempts tbody");
    replaceIfChanged(body, JSON.stringify([attempts, nodes.map((n) => n.id)]), () =>
      attempts.map((a) => el("tr", {},
        el("td", { text: a.attempt }),
        el("td", {}, a.worker_id ? link(historyLink({ worker: a.worker_id }), a.worker_id) : ""),
        el("td", {}, a.started_at ? el("time", { datetime: a.started_at,
          title: fmtUtc(a.started_at), text: fmtLocal(a.started_at) }) : ""),
        el("td", {}, a.finished_at ? el("time", { datetime: a.finished_at,
          title: fmtUtc(a.finished_at), text: fmtLocal(a.finished_at) }) : ""),
        el("td", { text: a.started_at && a.finished_at
          ? fmtDuration(ms(a.finished_at) - ms(a.started_at)) : "" }),
        el("td", { text: a.exit_code === null || a.exit_code === undefined ? "" : a.exit_code }),
        el("td", { class: a.error ? "error" : null, text: a.error || "" }))));
    taskDetail.querySelector(".attempts").hidden = attempts.length === 0;
    taskDetail.querySelector("[data-no-attempts]").hidden = attempts.length > 0;
    const output = typeof task.output === "string" ? task.output : "";
    setText(taskDetail.querySelector(".task-output"), output);
    taskDetail.querySelector(".task-output").hidden = output.length === 0;
    taskDetail.querySelector("[data-no-output]").hidden = output.length > 0;
  }

  // -- one job: the job's row with its actions, and its recent runs ------------------

  const jobCard = document.getElementById("job");

  async function readJob(shown) {
    const [nodes, job, runs] = await Promise.all([
      api("/nodes").then((d) => d.nodes),
      orMissing(api(`/jobs/${encodeURIComponent(shown.id)}`)),
      tasksOf(`/tasks?job_id=${encodeURIComponent(shown.id)}&limit=${JOB_RUNS_LIMIT}`),
    ]);
    await readOutputs(runs);
    return () => {
      noteNodes(nodes);
      setText(jobCard.querySelector(".title"), job ? job.name || `job #${job.id}` : `#${shown.id}`);
      const missing = jobCard.querySelector("[data-missing]");
      missing.hidden = job !== null;
      setText(missing, job ? "" : `There is no job #${shown.id}: it may have been deleted; its tasks stay.`);
      const jobs = job ? [job] : [];
      renderJobs(jobs, new Map(jobs.map((j) => [j.id, [...(j.recent || [])].reverse()])), "job");
      jobCard.querySelector("[data-empty]").hidden = true;
      setAttr(document.querySelector("#job-runs .all-runs"), "href",
        historyLink({ job_id: shown.id }));
      renderRecent(runs, "job-runs");
    };
  }

  // ---- the refresh loop -------------------------------------------------------------

  const live = document.getElementById("live");

  function setLive(ok, detail) {
    live.dataset.state = ok ? "ok" : "down";
    document.body.classList.toggle("stale", !ok);
    setText(live.querySelector(".text"), ok
      ? `live · ${timeOnly.format(new Date())}`
      : `cannot reach the scheduler (${detail}); retrying`);
  }

  // Lists carry only the end of each output (up to 64 KiB a task): the whole is read from
  // GET /tasks/{id}, once per task whose output is final (written with completed_at or
  // failed_at).
  const outputs = new Map();

  async function readOutputs(tasks) {
    const shown = new Set(tasks.map((t) => t.id));
    for (const id of outputs.keys()) if (!shown.has(id)) outputs.delete(id);
    const missing = tasks.filter((t) => !outputs.has(t.id) && (t.completed_at || t.failed_at));
    await Promise.all(missing.map((t) => api(`/tasks/${encodeURIComponent(t.id)}`)
      .then((full) => outputs.set(t.id, full.output))
      .catch((error) => {
        if (error instanceof SignedOut) throw error;  // else: gone meanwhile, no output
      })));
  }

  // Reads what the page shows and paints it; false when a change made meanwhile (or a
  // move to another page) voids the reads.
  async function refresh() {
    const seen = changes;
    const shown = route;
    const read = { overview: readOverview, tasks: readHistory, task: readTask, job: readJob };
    const paint = await read[shown.view](shown);
    if (seen !== changes || shown !== route) return false;
    paint();
    return true;
  }

  function noteNodes(nodes) {
    const beats = nodes.filter((n) => n.state !== "dead").map((n) => ms(n.last_heartbeat_at));
    if (beats.length) noteServerTime(Math.max(...beats));
    renderCounts(nodes);
  }

  async function readOverview() {
    const [nodes, scheduled, retrying, picked, running, failed, recent, jobs] = await Promise.all([
      api("/nodes").then((d) => d.nodes),
      tasksOf(`/tasks?status=scheduled&limit=${UPCOMING_LIMIT}`),
      tasksOf(`/tasks?status=retrying&limit=${UPCOMING_LIMIT}`),
      tasksOf("/tasks?status=picked&limit=100"),
      tasksOf("/tasks?status=running&limit=100"),
      tasksOf(`/tasks?status=failed&limit=${FAILURE_LIMIT}`),
      tasksOf(`/tasks?limit=${RECENT_LIMIT * 2}`),
      api(`/jobs?limit=${JOB_LIMIT}`).then((d) => d.jobs),
    ]);
    const waiting = new Set(["scheduled", "retrying"]);
    const recentShown = recent.filter((t) => !waiting.has(t.status)).slice(0, RECENT_LIMIT);
    await readOutputs([...failed, ...recentShown]);
    // Each job carries its latest outcomes (oldest first); the strip wants newest first.
    const outcomes = new Map(jobs.map((job) => [job.id, [...(job.recent || [])].reverse()]));
    return () => {
      noteNodes(nodes);
      renderNodes(nodes);
      renderUpcoming([...retrying, ...scheduled]);
      renderRunning([...running, ...picked]);
      renderFailures(failed);
      renderRecent(recentShown);
      renderJobs(jobs, outcomes);
    };
  }

  let timer = null;
  let inFlight = false;
  let again = false;

  async function tick() {
    clearTimeout(timer);
    if (inFlight) {
      again = true;
      return;
    }
    if (document.hidden) {
      timer = setTimeout(tick, REFRESH_MS);
      return;
    }
    inFlight = true;
    try {
      if (await refresh()) setLive(true);
      else again = true;
    } catch (error) {
      if (!(error instanceof SignedOut)) setLive(false, error.message);
    } finally {
      inFlight = false;
      if (again) {
        again = false;
        timer = setTimeout(tick, 0);
      } else {
        timer = setTimeout(tick, REFRESH_MS);
      }
    }
  }

  refreshSoon = () => { tick(); };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) tick();
  });

  // ---- the schedule form ------------------------------------------------------------

  const form = document.getElementById("schedule-form");
  const message = document.getElementById("schedule-message");
  const fields = {
    command: document.getElementById("command"),
    scheduled_at: document.getElementById("run-at"),
    cron: document.getElementById("cron"),
    timezone: document.getElementById("timezone"),
    name: document.getElementById("name"),
  };

  function browserZone() {
    try {
      return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    } catch (_) {
      return "UTC";
    }
  }

  function currentMode() {
    const checked = form.querySelector('input[name="mode"]:checked');
    return checked ? checked.value : "now";
  }

  function showMode() {
    const mode = currentMode();
    for (const part of form.querySelectorAll(".when")) part.hidden = part.dataset.mode !== mode;
    setText(document.getElementById("schedule-button"),
      mode === "cron" ? "Create job" : mode === "at" ? "Schedule" : "Run now");
  }

  function say(text, kind) {
    message.dataset.kind = kind;
    setText(message, text);
  }

  function markInvalid(name) {
    for (const [field, input] of Object.entries(fields)) {
      setAttr(input, "aria-invalid", field === name ? "true" : null);
    }
    if (name && fields[name]) fields[name].focus();
  }

  form.addEventListener("change", (event) => {
    if (event.target.name === "mode") showMode();
  });
  form.addEventListener("input", (event) => {
    event.target.removeAttribute("aria-invalid");
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = document.getElementById("schedule-button");
    const mode = currentMode();
    const body = { command: fields.command.value };
    if (!body.command.trim()) {
      say("Enter a command to run.", "error");
      markInvalid("command");
      return;
    }
    const name = fields.name.value.trim();
    if (name) body.name = name;
    if (mode === "at") {
      const at = localToRfc3339(fields.scheduled_at.value);
      if (!at) {
        say("Pick a date and time to run at.", "error");
        markInvalid("scheduled_at");
        return;
      }
      body.scheduled_at = at;
    } else if (mode === "cron") {
      body.cron = fields.cron.value.trim();
      body.timezone = fields.timezone.value.trim() || "UTC";
      if (!body.cron) {
        say("Enter a cron expression, e.g. */5 * * * *.", "error");
        markInvalid("cron");
        return;
      }
    }
    button.disabled = true;
    changes += 1;
    say("Submitting…", "info");
    try {
      const created = await api("/schedule", { method: "POST", body });
      markInvalid(null);
      if (created.kind === "job") {
        say(`Job #${created.id} created: ${created.description}.`, "ok");
      } else {
        say(`Task #${created.id} scheduled for ${fmtLocal(created.scheduled_at)}.`, "ok");
      }
      fields.command.value = "";
      fields.name.value = "";
    } catch (error) {
      if (!(error instanceof SignedOut)) {
        say(error.message, "error");
        markInvalid(error.field === "scheduled_at" ? "scheduled_at" : error.field);
      }
    } finally {
      button.disabled = false;
      changes += 1;
      refreshSoon();
    }
  });

  // ---- start ------------------------------------------------------------------------

  fields.timezone.value = browserZone();
  setText(document.getElementById("local-zone"), browserZone());
  if (typeof Intl.supportedValuesOf === "function") {
    const zones = document.getElementById("zones");
    zones.append(...Intl.supportedValuesOf("timeZone").map((zone) => el("option", { value: zone })));
  }
  showMode();
  showRoute();
  tick();
})();
