// The VM page's serial console: xterm.js over the /console namespace, with flow control and reconnection.
// `position` is the absolute console offset written so far: after a drop, attach resumes from it.
"use strict";

const SerialConsole = (() => {
  const term = new Terminal({scrollback: 5000, cursorBlink: true, disableStdin: WH.role !== "control",
    fontFamily: "'DejaVu Sans Mono', monospace", fontSize: 14});
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  new ResizeObserver(() => fit.fit()).observe(document.getElementById("terminal"));

  const socket = io("/console");
  const conn = document.getElementById("conn");
  let position = null;

  function bytes(text) {                 // the server sends one character per byte (latin-1)
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  function write(data, end) {
    term.write(data, () => socket.emit("ack", {vm: WH.vm, position: end}));
  }

  socket.on("connect", () => {
    socket.emit("attach", {vm: WH.vm, since: position}, (reply) => {
      if (reply.error) { conn.textContent = reply.error; return; }
      if (reply.mode === "replay") { term.reset(); }
      write(reply.mode === "replay" ? reply.data : bytes(reply.data), reply.position);
      position = reply.position;
      conn.textContent = reply.mode === "replay" ? "connected" : "reconnected, nothing lost";
      conn.className = "conn up";
    });
  });
  socket.on("disconnect", () => { conn.textContent = "disconnected, retrying…"; conn.className = "conn down"; });
  socket.on("output", (m) => {
    if (position === null || m.end <= position) return;
    let data = bytes(m.data);
    if (m.start < position) data = data.subarray(position - m.start);
    position = m.end;
    write(data, m.end);
  });
  socket.on("replay", (m) => { term.reset(); position = m.position; write(m.data, m.position); });
  socket.on("marker", (m) => {
    const time = new Date(m.t * 1000).toLocaleTimeString();
    document.getElementById("markers").prepend(WH.el("li", {}, time + "  " + m.label));
    term.registerMarker(0);
  });
  socket.on("vm_state", (m) => window.Panels && Panels.refreshSummary());    // "migrated": the summary names the node
  socket.on("migration", (m) => window.Panels && WH.status(Panels.migrationText(m), m.phase === "failed"));

  // What happens to typed keys, said under the console: a viewer's go nowhere, a paused VM's wait in COM1's
  // input queue until Resume.
  const hint = document.getElementById("console-hint");
  let hintTimer = null;
  function showHint(text, sticky) {
    hint.textContent = text;
    hint.classList.add("shown");
    clearTimeout(hintTimer);
    if (!sticky) hintTimer = setTimeout(() => { hint.textContent = ""; hint.classList.remove("shown"); }, 6000);
  }
  function typed(data) {
    if (WH.role !== "control") {
      showHint("read-only: this page has the viewer token, so typing goes nowhere. Open the control URL to type.");
      return;
    }
    if (WH.vmState === "paused") {
      showHint("VM paused: what you type is queued until you resume it.");
    } else if (WH.vmState === "suspended" || WH.vmState === "idle") {
      showHint("VM not running: typed keys wait in COM1's queue until it boots.");
    }
    socket.emit("input", {vm: WH.vm, data}, (r) => r.error && WH.status(r.error, true));
  }
  term.onData(typed);
  document.getElementById("terminal").addEventListener("keydown", (e) => {     // capture: before xterm.js
    if (WH.role !== "control" && !e.ctrlKey && !e.metaKey && (e.key.length === 1 || e.key === "Enter")) typed(e.key);
  }, true);

  // Copy and paste, as buttons and as GNOME Terminal's Ctrl-Shift-C / Ctrl-Shift-V.
  async function paste() {
    const text = await navigator.clipboard.readText().catch(() => null);
    if (text === null) { WH.status("paste: the browser refused the clipboard (allow it, or use the middle button)", true); return; }
    if (text) typed(text.replace(/\r?\n/g, "\r"));
  }
  document.getElementById("copy").addEventListener("click", () => {
    const text = term.getSelection();
    if (!text) { WH.status("copy: select text in the console first"); return; }
    navigator.clipboard.writeText(text).then(() => WH.status("copied " + text.length + " characters"),
      () => WH.status("copy: the browser refused the clipboard", true));
  });
  document.getElementById("paste").addEventListener("click", paste);

  // Send keys: control characters a browser keeps for itself or a user cannot type.
  const KEYS = {"ctrl-c": "\x03", "ctrl-d": "\x04", "ctrl-u": "\x15", "ctrl-z": "\x1a", "esc": "\x1b"};
  const menuButton = document.getElementById("sendkeys-button");
  const menu = document.querySelector("#sendkeys .menu-items");
  menuButton.addEventListener("click", () => { menu.hidden = !menu.hidden; menuButton.setAttribute("aria-expanded", String(!menu.hidden)); });
  menu.querySelectorAll("button[data-keys]").forEach((b) => b.addEventListener("click", () => {
    menu.hidden = true;
    menuButton.setAttribute("aria-expanded", "false");
    typed(KEYS[b.dataset.keys]);
    WH.status("sent " + b.textContent);
    term.focus();
  }));

  // Fullscreen: the console alone, filling the screen (the browser's fullscreen where allowed); fit follows.
  const fsButton = document.getElementById("fullscreen");
  function setFullscreen(on) {
    document.body.classList.toggle("fullscreen", on);
    fsButton.textContent = on ? "Leave fullscreen" : "Fullscreen";
    requestAnimationFrame(() => { fit.fit(); term.focus(); });
  }
  fsButton.addEventListener("click", () => {
    const on = !document.body.classList.contains("fullscreen");
    setFullscreen(on);
    if (on && document.documentElement.requestFullscreen) document.documentElement.requestFullscreen().catch(() => {});
    else if (!on && document.fullscreenElement) document.exitFullscreen().catch(() => {});
  });
  document.addEventListener("fullscreenchange", () => { if (!document.fullscreenElement) setFullscreen(false); });
  term.attachCustomKeyEventHandler((e) => {
    if (e.type === "keydown" && e.ctrlKey && e.shiftKey && e.code === "KeyC") {   // copy, as in GNOME Terminal
      navigator.clipboard.writeText(term.getSelection());
      return false;
    }
    if (e.type === "keydown" && e.ctrlKey && e.shiftKey && e.code === "KeyV") {   // paste, as in GNOME Terminal
      paste();
      return false;
    }
    // A read-only terminal's textarea lets keys do their page default: space and PageDown scrolled the page
    // away from the console, and xterm.js does not draw while it is out of view. Keys typed there do nothing.
    if (WH.role !== "control" && e.type === "keydown" && e.key !== "Tab" && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
    }
    return true;
  });
  term.focus();
  return {term, socket, position: () => position};
})();
