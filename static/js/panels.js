// The VM page's panels, fed by the /inspect namespace (every panel on watch, then only what changed),
// and its buttons: lifecycle, tunables, screenshots, recordings, EPT walk.
"use strict";

const VGA_COLOURS = ["#000", "#00a", "#0a0", "#0aa", "#a00", "#a0a", "#a50", "#aaa",
  "#555", "#55f", "#5f5", "#5ff", "#f55", "#f5f", "#ff5", "#fff"];

const Panels = (() => {
  const panels = {};
  let previousRegs = {};
  const vcpuSelect = document.getElementById("vcpu");
  const vmPath = "/vms/" + encodeURIComponent(WH.vm);

  function state(text) {
    const el = document.getElementById("state");
    el.textContent = text;
    el.className = "state state-" + text;
  }

  function renderSummary(s) {
    state(s.state);
    if (s.suspend_message) document.getElementById("state").title = s.suspend_message;
    if (vcpuSelect.options.length !== s.cpus) {
      vcpuSelect.replaceChildren(...Array.from({length: s.cpus}, (_, i) => WH.el("option", {value: i}, "vcpu" + i)));
    }
    const record = document.getElementById("record");
    record.textContent = s.recording ? "stop recording" : "record";
    record.dataset.recording = s.recording || "";
  }

  function renderRegisters(p) {
    const regs = p.registers;
    const rows = Object.entries(regs).map(([name, value]) => {
      const changed = previousRegs[name] !== undefined && previousRegs[name] !== value;
      return WH.el("tr", {class: changed ? "changed" : ""}, WH.el("th", {}, name), WH.el("td", {}, WH.hex(value, 16)));
    });
    previousRegs = regs;
    document.getElementById("registers").replaceChildren(...rows);
    document.getElementById("regs-note").textContent = p.state + ", " + p.bits + "-bit code";
    document.getElementById("disasm").textContent =
      p.disassembly.map((i) => WH.hex(i.address, 8) + "  " + i.bytes.padEnd(20) + " " + i.text).join("\n");
  }

  function renderVmcs(p) {
    const box = document.getElementById("vmcs");
    const open = new Set([...box.querySelectorAll("details[open]")].map((d) => d.dataset.group));
    if (!box.children.length) open.add("exit information");
    const groups = p.groups.map((g) => {
      const d = WH.el("details", {"data-group": g.name}, WH.el("summary", {}, g.name + " (" + g.fields.length + ")"),
        WH.el("table", {class: "grid"}, g.fields.map((f) => WH.el("tr", {},
          WH.el("td", {class: "enc"}, WH.hex(f.encoding, 4)), WH.el("th", {}, f.name),
          WH.el("td", {class: "num"}, WH.hex(f.value, f.width / 4))))));
      d.open = open.has(g.name);
      return d;
    });
    box.replaceChildren(...groups);
    const e = p.last_exit;
    document.getElementById("last-exit").textContent = e.reason + " " + e.name + "  qualification " +
      WH.hex(e.qualification) + (e.decoded ? "  (" + e.decoded + ")" : "");
  }

  function renderStats(p) {
    document.getElementById("stats").replaceChildren(...p.rows.filter((r) => r.value).map((r) =>
      WH.el("tr", {}, WH.el("td", {}, r.description), WH.el("td", {class: "num"}, r.value.toLocaleString()))));
  }

  function renderHistogram(samples) {
    const totals = {};
    samples.forEach((s) => Object.entries(s.exits).forEach(([k, v]) => { if (k !== "VMEXIT_COUNT") totals[k] = (totals[k] || 0) + v; }));
    const names = Object.keys(totals).sort((a, b) => totals[b] - totals[a]);
    if (!names.length) {
      document.getElementById("histogram").replaceChildren(WH.el("p", {class: "na"}, "no exits in the last " + samples.length + " ticks"));
      return;
    }
    const peak = Math.max(1, ...samples.flatMap((s) => names.map((n) => s.exits[n] || 0)));
    document.getElementById("histogram").replaceChildren(...names.map((n) => WH.el("div", {class: "hist-row"},
      WH.el("span", {class: "hist-name"}, n.replace("VMEXIT_", "")),
      WH.el("span", {class: "hist-bars"}, samples.map((s) => WH.el("i", {style: "height:" + Math.round(100 * (s.exits[n] || 0) / peak) + "%",
        title: (s.exits[n] || 0) + " at " + new Date(s.t * 1000).toLocaleTimeString()}))),
      WH.el("span", {class: "num"}, totals[n].toLocaleString()))));
  }

  function tunableRow(t) {
    const input = WH.el("input", {"data-name": t.name, size: 6, class: "control"});
    if (WH.role !== "control") input.disabled = true;
    input.addEventListener("change", async () => {
      try {
        const r = await WH.api("PUT", "/tunables/" + t.name, {value: input.value});
        WH.status(r.name + ": " + r.old + " → " + r.value);
        input.blur();
      } catch (e) {
        WH.status(e.message, true);
        input.value = input.dataset.value;
      }
    });
    return WH.el("tr", {"data-name": t.name}, WH.el("th", {}, t.name), WH.el("td", {}, input),
      WH.el("td", {class: "num"}, "default " + t.default),
      WH.el("td", {}, t.description + (t.boot_only ? " (read at VM creation)" : "") +
        (t.read_only ? " (read-only sysctl; set through " + t.set_by + ")" : t.bhyve_boot ? " (bhyve reads it only at boot)" : "")));
  }

  function renderTunables(list) {
    const table = document.getElementById("tunables");
    if (table.rows.length !== list.length) table.replaceChildren(...list.map(tunableRow));
    list.forEach((t, i) => {
      const row = table.rows[i];
      const input = row.querySelector("input");
      input.dataset.value = t.value;
      if (document.activeElement !== input) input.value = t.value;     // never overwrite what is being typed
      row.classList.toggle("changed", t.value !== t.default);
    });
  }

  function renderVga(v) {
    const lines = v.lines.map((line, r) => {
      const spans = [];
      for (let c = 0; c < line.length; c++) {
        const attr = parseInt(v.attrs[r].substr(2 * c, 2), 16);
        const style = "color:" + VGA_COLOURS[attr & 15] + ";background:" + VGA_COLOURS[(attr >> 4) & 7];
        const last = spans[spans.length - 1];
        if (last && last.style === style) last.text += line[c]; else spans.push({style, text: line[c]});
      }
      return spans.map((s) => WH.el("span", {style: s.style}, s.text));
    });
    document.getElementById("vga").replaceChildren(...lines.flatMap((l) => [...l, "\n"]));
  }

  function optionalView(title, view, render) {
    if (!view.available) return WH.el("p", {class: "na"}, title + ": not available (" + view.reason + ")");
    return WH.el("div", {}, WH.el("h3", {}, title), render(view.value));
  }

  function table(rows) {
    if (!Array.isArray(rows)) rows = Object.entries(rows).map(([k, v]) => ({name: k, value: v}));
    if (!rows.length) return WH.el("p", {}, "(empty)");
    const keys = Object.keys(rows[0]);
    return WH.el("table", {class: "grid"}, WH.el("tr", {}, keys.map((k) => WH.el("th", {}, k))),
      rows.map((r) => WH.el("tr", {}, keys.map((k) => WH.el("td", {}, typeof r[k] === "number" && r[k] > 9 ? WH.hex(r[k]) : JSON.stringify(r[k]))))));
  }

  function renderEpt(view) {
    document.getElementById("ept").replaceChildren(optionalView("guest-physical map", view, table));
  }

  function renderCaches(c) {
    document.getElementById("caches").replaceChildren(
      ...c.tlb.map((v, i) => optionalView("TLB vcpu" + i, v, table)),
      ...c.l1d.map((v, i) => optionalView("L1D vcpu" + i, v, table)));
  }

  const RENDER = {summary: renderSummary, tunables: renderTunables, exits: renderHistogram, vga: renderVga,
    ept: renderEpt, caches: renderCaches};

  function render(changed) {
    Object.assign(panels, changed);
    const v = vcpuSelect.value || "0";
    Object.entries(changed).forEach(([name, value]) => { if (RENDER[name]) RENDER[name](value); });
    if (changed["registers/" + v]) renderRegisters(changed["registers/" + v]);
    if (changed["vmcs/" + v]) renderVmcs(changed["vmcs/" + v]);
    if (changed["stats/" + v]) renderStats(changed["stats/" + v]);
  }

  vcpuSelect.addEventListener("change", () => {
    previousRegs = {};
    const v = vcpuSelect.value;
    renderRegisters(panels["registers/" + v]); renderVmcs(panels["vmcs/" + v]); renderStats(panels["stats/" + v]);
  });

  const socket = io("/inspect");
  socket.on("connect", () => socket.emit("watch", {vm: WH.vm}, (r) => r.error ? WH.status(r.error, true) : render(r.panels)));
  socket.on("update", (m) => render(m.panels));

  document.querySelectorAll("button[data-action]").forEach((b) => b.addEventListener("click", async () => {
    try {
      const s = await WH.api("POST", vmPath + "/" + b.dataset.action);
      state(s.state);
      WH.status(b.dataset.action + ": " + s.state);
    } catch (e) {
      WH.status(b.dataset.action + ": " + e.message, true);
    }
  }));

  document.getElementById("shot-serial").href = "/api/v1" + vmPath + "/screenshot/serial.png";
  document.getElementById("shot-vga").href = "/api/v1" + vmPath + "/screenshot/vga.png";

  async function refreshRecordings() {
    const {recordings} = await WH.api("GET", "/recordings");
    document.getElementById("recordings").replaceChildren(...recordings.filter((r) => r.vm === WH.vm).map((r) =>
      WH.el("li", {"data-id": r.id}, r.id + " (" + r.bytes + " bytes" + (r.active ? ", recording" : "") + ") ",
        WH.el("a", {href: "/api/v1/recordings/" + r.id + "?download=1", download: r.id}, "download"), " ",
        WH.el("button", {onclick: () => play(r.id)}, "play"))));
  }

  function play(id) {
    const box = document.getElementById("player");
    box.replaceChildren();
    AsciinemaPlayer.create("/api/v1/recordings/" + id, box, {cols: 80, rows: 25, autoPlay: true});
  }

  document.getElementById("record").addEventListener("click", async (event) => {
    const recording = event.target.dataset.recording;
    try {
      const r = await WH.api(recording ? "DELETE" : "POST", vmPath + "/recording");
      WH.status((recording ? "stopped " : "recording to ") + r.id);
      renderSummary({...panels.summary, recording: recording ? null : r.id});
    } catch (e) {
      WH.status(e.message, true);
    }
    refreshRecordings();
  });

  function walkForm(id, path) {
    document.getElementById(id).addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = event.target.querySelector("input");
      try {
        const r = await WH.api("GET", path() + "=" + encodeURIComponent(input.value));
        document.getElementById("ept-walk").textContent = r.available ? JSON.stringify(r.value, null, 1) : "not available: " + r.reason;
      } catch (e) {
        WH.status(e.message, true);
      }
    });
  }
  walkForm("ept-lookup", () => vmPath + "/ept/lookup?gpa");
  walkForm("translate", () => vmPath + "/vcpus/" + (vcpuSelect.value || 0) + "/translate?gla");

  refreshRecordings();
  return {state, render, refreshRecordings};
})();
