// webhyve pages: JSON API calls and the status line shared by every page. The token is in an HttpOnly cookie
// that every request and Socket.IO connection of the page carries; the page never sees it.
"use strict";

const WH = {
  role: document.body.dataset.role,
  vm: document.body.dataset.vm,

  async api(method, path, body) {
    const options = {method, headers: {}};
    if (body instanceof FormData) {
      options.body = body;
    } else if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch("/api/v1" + path, options);
    const data = await response.json().catch(() => ({error: response.statusText}));
    if (!response.ok) {
      throw new Error(data.error || response.statusText);
    }
    return data;
  },

  status(text, isError) {
    const el = document.getElementById("status");
    el.textContent = text;
    el.className = isError ? "error" : "ok";
  },

  hex(value, width) {
    return "0x" + BigInt(value).toString(16).padStart(width || 1, "0");
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

if (WH.role !== "control") {
  document.querySelectorAll(".control").forEach((b) => { b.disabled = true; b.title = "needs the control token"; });
}
