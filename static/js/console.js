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
  socket.on("vm_state", (m) => Panels && Panels.state(m.state));

  term.onData((data) => socket.emit("input", {vm: WH.vm, data}, (r) => r.error && WH.status(r.error, true)));
  term.attachCustomKeyEventHandler((e) => {
    if (e.type === "keydown" && e.ctrlKey && e.shiftKey && e.code === "KeyC") {   // copy, as in GNOME Terminal
      navigator.clipboard.writeText(term.getSelection());
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
