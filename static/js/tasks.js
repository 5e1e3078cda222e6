// The task log panel (Proxmox VE's "Tasks"): start, end, duration, node, who, what, status; a running task with its
// progress bar, a failed one with its error in red. Filled from GET /api/v1/tasks, then kept live by the /tasks
// namespace's `task` events (webhyve/web/tasks.py). On a VM's page (data-vm) only that VM's tasks.
"use strict";

const TASKS = {
  table: document.getElementById("tasks"),
  shown: new Map(),          // task id -> its latest dict
  limit: 50,

  when(t) {                  // a local time, with the date when it is not today
    const d = new Date(t * 1000), today = new Date().toDateString() === d.toDateString();
    return (today ? "" : d.toLocaleDateString("en-CA") + " ") + d.toLocaleTimeString("en-GB");
  },

  seconds(task) {            // "0.114 s", "12.3 s", "2 min 05 s": a running task counts up from its start
    const s = task.state === "running" ? Math.max(0, Date.now() / 1000 - task.started) : task.duration_s;
    return s < 60 ? s.toFixed(s < 10 ? 3 : 1) + " s" : WH.duration(s);
  },

  status(task) {
    if (task.state === "ok") return WH.el("span", {class: "task-ok"}, "OK");
    if (task.state === "error") {
      return WH.el("span", {class: "task-error", title: "HTTP " + task.http_status}, task.status);
    }
    const p = task.progress || {}, bar = WH.el("progress", {max: "1", title: p.text || "running"});
    if (p.fraction !== null && p.fraction !== undefined) bar.value = p.fraction;      // none: indeterminate
    return WH.el("span", {class: "task-running"}, bar, " ", p.text || "running");
  },

  row(task) {
    const attrs = {"data-task": task.id, "data-kind": task.kind, "data-vm": task.vm || "", "data-state": task.state};
    return WH.el("tr", attrs,
      WH.el("td", {}, TASKS.when(task.started)), WH.el("td", {}, task.ended ? TASKS.when(task.ended) : ""),
      WH.el("td", {class: "num task-duration"}, TASKS.seconds(task)), WH.el("td", {}, task.node),
      WH.el("td", {}, task.who), WH.el("td", {title: task.id}, task.description),
      WH.el("td", {class: "task-status"}, TASKS.status(task)));
  },

  draw() {
    const newest = (a, b) => b.started - a.started || (b.id > a.id ? 1 : -1);
    const all = [...TASKS.shown.values()].sort(newest), tasks = all.slice(0, TASKS.limit);
    all.slice(TASKS.limit).forEach((t) => TASKS.shown.delete(t.id));      // a page left open stays small
    TASKS.table.querySelector("tbody").replaceChildren(...tasks.map(TASKS.row));
    document.getElementById("no-tasks").hidden = tasks.length > 0;
  },

  take(task) {
    if (WH.vm && task.vm !== WH.vm) return;
    TASKS.shown.set(task.id, task);
    TASKS.draw();
  },

  async load() {
    try {
      const only = WH.vm ? "&vm=" + encodeURIComponent(WH.vm) : "";
      const {tasks} = await WH.api("GET", "/tasks?limit=" + TASKS.limit + only);
      tasks.forEach((t) => TASKS.shown.set(t.id, t));
      TASKS.draw();
    } catch (e) {
      WH.status("tasks: " + e.message, true);
    }
  },
};

if (TASKS.table) {
  const socket = io("/tasks");
  socket.on("task", TASKS.take);
  socket.on("connect", TASKS.load);           // and again after a reconnect: what changed meanwhile
  setInterval(() => {                          // running tasks' durations count up
    if ([...TASKS.shown.values()].some((t) => t.state === "running")) TASKS.draw();
  }, 1000);
}
