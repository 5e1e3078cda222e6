// webhyve pages: JSON API calls and the status line shared by every page. The token is in an HttpOnly cookie
// that every request and Socket.IO connection of the page carries; the page never sees it.
"use strict";

const WH = {
  role: document.body.dataset.role,
  admin: document.body.dataset.admin === "yes",     // host-wide things: tunables, demos, snapshot restore (policy.py)
  vm: document.body.dataset.vm,

  async api(method, path, body) {
    const options = {method, headers: {}};
    const csrf = document.querySelector("meta[name=csrf-token]");     // the page session's CSRF token (csrf.py)
    if (csrf) options.headers["X-CSRF-Token"] = csrf.content;
    if (body instanceof FormData) {
      options.body = body;
    } else if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch("/api/v1" + path, options);
    const data = WH.parse(await response.text()) || {error: response.statusText};
    if (!response.ok) {
      throw new Error(data.error || response.statusText);
    }
    return data;
  },

  // JSON with every integer a double cannot hold exactly kept as its decimal text (as the /inspect stream
  // sends them), so a 64-bit address shows exactly; WH.hex takes either. Uses JSON.parse's source text access.
  parse(text) {
    try {
      return JSON.parse(text, (key, value, context) => typeof value === "number" && !Number.isSafeInteger(value) &&
        context && /^-?[0-9]+$/.test(context.source) ? context.source : value);
    } catch (e) {
      return null;
    }
  },

  status(text, isError) {
    const el = document.getElementById("status");
    el.textContent = text;
    el.className = isError ? "error" : "ok";
  },

  hex(value, width) {
    return "0x" + BigInt(value).toString(16).padStart(width || 1, "0");
  },

  // A count in decimal with thousands separators; hex is for addresses, encodings and register values.
  count(value) {
    return Number(value).toLocaleString("en-US");
  },

  // "3 h 04 min", "2 min 05 s", "12 s": how long since the VM booted.
  duration(seconds) {
    const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return h + " h " + String(m).padStart(2, "0") + " min";
    if (m) return m + " min " + String(r).padStart(2, "0") + " s";
    return r + " s";
  },

  // A confirmation in the page's own dialog (not window.confirm): resolves true for the OK button.
  confirm(text, okLabel) {
    const dialog = document.getElementById("confirm-dialog");
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-ok").textContent = okLabel || "OK";
    dialog.returnValue = "";
    dialog.showModal();
    return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true}));
  },

  // Open a <dialog> holding one form; resolves with its FormData on the submit button whose value is "save"
  // (or any value but "cancel"), null on Cancel or Esc.
  ask(dialog, fill) {
    const form = dialog.querySelector("form");
    form.reset();
    if (fill) fill(form);
    dialog.returnValue = "";
    dialog.showModal();
    return new Promise((resolve) => dialog.addEventListener("close", () =>
      resolve(dialog.returnValue && dialog.returnValue !== "cancel" ? new FormData(form) : null), {once: true}));
  },

  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    });
    children.flat().forEach((c) => node.append(c instanceof Node ? c : String(c)));
    return node;
  },
};

// The theme: the browser's preference (prefers-color-scheme) unless the header's switch chose one.
(() => {
  const select = document.getElementById("theme");
  if (!select) return;
  select.value = document.documentElement.dataset.theme || "";
  select.addEventListener("change", () => {
    if (select.value) document.documentElement.dataset.theme = select.value;
    else delete document.documentElement.dataset.theme;
    try { localStorage.setItem("webhyve-theme", select.value); } catch (e) { /* private mode: this page only */ }
  });
})();

if (WH.role !== "control") {
  document.querySelectorAll(".control").forEach((b) => { b.disabled = true; b.title = "needs the control token"; });
}
