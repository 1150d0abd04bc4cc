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

  // Meta is a list of short facts: [text, title?, class?] triples.
  function updateMeta(node, facts) {
    const kept = facts.filter((fact) => fact && fact[0]);
    replaceIfChanged(node, JSON.stringify(kept), () => kept.map(([text, title, cls]) =>
      el("span", { class: cls || null, title: title || null, text })));
  }

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
    return task.job_id ? [`job #${task.job_id}`, null, "tag"] : null;
  }

  function nameFact(task) {
    return task.name ? [task.name, "name", "tag"] : null;
  }

  function retryFact(task) {
    return task.retry_of ? [`retry of #${task.retry_of}`, null, "tag"] : null;
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
      const row = button.closest("li");
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
      const row = button.closest("li");
      if (!row || button.disabled) return;
      button.disabled = true;
      changes += 1;
      button.textContent = "Retrying…";
      try {
        const task = await api(`/tasks/${encodeURIComponent(row.dataset.key)}/retry`,
          { method: "POST", body: {} });
        showNotice(`Task #${task.retry_of} retried as task #${task.id}.`, "info");
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
    setText(section.querySelector("[data-count]"),
      items.length ? `${items.length}${capped ? "+" : ""}` : "");
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
          [`#${t.id}`, null, "id"],
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
          [`#${t.id}`, null, "id"],
          [started ? `running ${fmtDuration(elapsed)}` : `picked ${fmtDuration(elapsed)} ago`,
            t.started_at || t.picked_at, "strong"],
          t.worker_id ? [`on ${shortNode(t.worker_id)}`, "worker", "node"] : null,
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
          [`#${t.id}`, null, "id"],
          [t.error || "failed", "error", "error"],
          [`failed ${fmtRelative(t.failed_at)}`, t.failed_at, "strong"],
          t.worker_id ? [`on ${shortNode(t.worker_id)}`, "worker", "node"] : null,
          attemptFact(t), nameFact(t), jobFact(t), retryFact(t),
        ]);
        updateOutput(row.querySelector(".output"), outputs.get(t.id));
      },
    });
  }

  function finishedAt(t) {
    return t.completed_at || t.failed_at || t.cancelled_at;
  }

  function renderRecent(tasks) {
    reconcile("recent", tasks, {
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
          [`#${t.id}`, null, "id"],
          when,
          Number.isFinite(took) ? [`took ${fmtDuration(took)}`] : null,
          t.status === "failed" && t.error ? [t.error, "error", "error"] : null,
          attemptFact(t), nameFact(t), jobFact(t), retryFact(t),
        ]);
        updateOutput(row.querySelector(".output"), outputs.get(t.id));
      },
    });
  }

  function renderJobs(jobs, outcomes) {
    const ids = new Set(jobs.map((j) => String(j.id)));
    for (const id of jobsShown.keys()) if (!ids.has(id)) jobsShown.delete(id);
    reconcile("jobs", jobs, {
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
              el("strong", { class: "name" }), el("span", { class: "status paused-badge", "data-status": "paused", text: "paused" })),
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
        setText(row.querySelector(".name"), j.name || `job #${j.id}`);
        updateCommand(row.querySelector(".cmd"), j.command);
        const desc = row.querySelector(".desc");
        replaceIfChanged(desc, JSON.stringify([j.description, j.cron, j.timezone]), () => [
          el("span", { class: "words", text: j.description || "" }),
          el("code", { class: "expr", text: j.cron }),
          el("span", { class: "tz", text: j.timezone }),
        ]);
        const runs = Array.isArray(j.next_runs) ? j.next_runs.slice(0, 3) : [];
        const next = row.querySelector(".next");
        replaceIfChanged(next, JSON.stringify([runs, j.paused, runs.length && fmtRelative(runs[0])]),
          () => runs.length === 0 ? [el("span", { class: "label", text: "No further runs" })] : [
            el("span", { class: "label", text: j.paused ? "Paused; would run" : "Next runs" }),
            el("ol", {}, ...runs.map((run, i) => el("li", { class: "next-run" },
              el("time", { datetime: run, title: run, text: fmtLocal(run) }),
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
          el("code", { class: "node-id" })),
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
        setAttr(id, "title", n.id);
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

  // Reads everything and paints it; false when a change made meanwhile voids the reads.
  async function refresh() {
    const seen = changes;
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
    if (seen !== changes) return false;
    const beats = nodes.filter((n) => n.state !== "dead").map((n) => ms(n.last_heartbeat_at));
    if (beats.length) noteServerTime(Math.max(...beats));
    renderCounts(nodes);
    renderNodes(nodes);
    renderUpcoming([...retrying, ...scheduled]);
    renderRunning([...running, ...picked]);
    renderFailures(failed);
    renderRecent(recentShown);
    renderJobs(jobs, outcomes);
    return true;
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
  tick();
})();
