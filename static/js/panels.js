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

  // The state badge in the legend's words (running, idle in HLT, paused, powered off, stopped: reason), the
  // uptime, and the toolbar: each lifecycle button enabled only where the server says it applies.
  let uptimeBase = null;
  function renderSummary(s) {
    const el = document.getElementById("state");
    el.textContent = s.status + (s.node ? " on " + s.node : "");         // cluster mode: the VM's node
    el.className = "state state-" + s.state;
    el.title = s.status_detail || "";
    el.dataset.state = s.state;
    WH.vmState = s.state;
    uptimeBase = s.uptime_s === null ? null : {seconds: s.uptime_s, at: performance.now()};
    showUptime();
    document.querySelectorAll("button[data-action]").forEach((b) => {
      b.disabled = WH.role !== "control" || !s.actions.includes(b.dataset.action);
      b.title = WH.role !== "control" ? "needs the control token"
        : b.disabled ? b.textContent + " does not apply to a VM that is " + s.status : "";
    });
    if (vcpuSelect.options.length !== s.cpus) {
      vcpuSelect.replaceChildren(...Array.from({length: s.cpus}, (_, i) => WH.el("option", {value: i}, "vcpu" + i)));
    }
    const record = document.getElementById("record");
    record.textContent = s.recording ? "stop recording" : "record";
    record.dataset.recording = s.recording || "";
  }

  function showUptime() {
    const el = document.getElementById("uptime");
    el.textContent = uptimeBase === null ? "" : "up " + WH.duration(uptimeBase.seconds + (performance.now() - uptimeBase.at) / 1000);
  }
  setInterval(showUptime, 1000);

  async function refreshSummary() {
    try {
      renderSummary(await WH.api("GET", vmPath));
    } catch (e) {
      WH.status(e.message, true);
    }
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

  // Each stat's total and, beside it, its rate over the last tick (null: a gauge, or not measured yet).
  function renderStats(p) {
    document.getElementById("stats").replaceChildren(
      WH.el("tr", {}, WH.el("th", {}, "stat"), WH.el("th", {class: "num"}, "total"), WH.el("th", {class: "num"}, "rate")),
      ...p.rows.filter((r) => r.value).map((r) => WH.el("tr", {}, WH.el("td", {}, r.description),
        WH.el("td", {class: "num"}, WH.count(r.value)),
        WH.el("td", {class: "num rate", "data-rate": r.rate === null || r.rate === undefined ? "" : String(r.rate)},
          r.rate === null || r.rate === undefined ? "" : Graphs.rateText(r.rate)))));
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

  // A tunable's control: a checkbox for a boolean, a menu for a few choices (-1 is "auto"), a number box
  // otherwise. Those read at VM creation say so: a running VM keeps the value it was created with.
  function tunableInput(t) {
    let input;
    if (t.type === "bool") {
      input = WH.el("input", {type: "checkbox"});
    } else if (t.maximum - t.minimum <= 3) {
      const label = (v) => v === -1 ? "auto (-1)" : t.maximum - t.minimum === 2 && v === 0 ? "off (0)" : t.maximum - t.minimum === 2 && v === 1 ? "on (1)" : String(v);
      input = WH.el("select", {}, Array.from({length: t.maximum - t.minimum + 1}, (_, i) => t.minimum + i)
        .map((v) => WH.el("option", {value: v}, label(v))));
    } else {
      input = WH.el("input", {type: "number", min: t.minimum, max: t.maximum, step: 1, size: 6});
    }
    input.classList.add("control");
    input.dataset.name = t.name;
    if (WH.role !== "control" || !WH.admin) input.disabled = true;     // host-wide: an administrator's
    const value = () => input.type === "checkbox" ? (input.checked ? 1 : 0) : input.value;
    input.addEventListener("change", async () => {
      try {
        const r = await WH.api("PUT", "/tunables/" + t.name, {value: value()});
        WH.status(r.name + ": " + r.old + " → " + r.value + " (host-wide" + (t.boot_only ? "; VMs created from now on read it" : "") + ")");
        if (input.type !== "checkbox" && input.tagName !== "SELECT") input.blur();
      } catch (e) {
        WH.status(e.message, true);
        setInput(input, Number(input.dataset.value));
      }
    });
    return input;
  }

  function setInput(input, value) {
    if (input.type === "checkbox") input.checked = value !== 0; else input.value = value;
  }

  function tunableRow(t) {
    const note = t.boot_only ? WH.el("span", {class: "boot-only", title: "read when a VM is created: VMs already running keep the value they started with"}, "read at VM creation") : "";
    const origin = t.read_only ? " (read-only sysctl; set through " + t.set_by + ")" : t.bhyve_boot ? " (bhyve reads it only at boot)" : "";
    const input = tunableInput(t);
    if (t.read_only) input.disabled = true;
    return WH.el("tr", {"data-name": t.name},
      WH.el("td", {class: "tunable"}, WH.el("strong", {}, t.name), " ", note, WH.el("div", {class: "note"}, t.description + origin)),
      WH.el("td", {}, input), WH.el("td", {class: "num"}, "default " + t.default));
  }

  function renderTunables(list) {
    const table = document.getElementById("tunables");
    if (table.rows.length !== list.length) table.replaceChildren(...list.map(tunableRow));
    list.forEach((t, i) => {
      const row = table.rows[i];
      const input = row.querySelector("[data-name]");
      input.dataset.value = t.value;
      if (document.activeElement !== input || input.type === "checkbox") setInput(input, t.value);   // never overwrite what is being typed
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
    // A guest that never wrote to the text screen (a serial-only guest) gets one line, not a black box.
    const blank = v.lines.every((line) => !line.trim());
    document.getElementById("vga").hidden = blank;
    document.getElementById("shot-vga").hidden = blank;
    document.getElementById("vga-note").textContent = blank ? "blank: this guest writes to the serial console only" : "";
  }

  function optionalView(title, view, render) {
    if (!view.available) return WH.el("p", {class: "na"}, title + ": not available (" + view.reason + ")");
    return WH.el("div", {}, WH.el("h3", {}, title), render(view.value));
  }

  // A table with a header row; each column is [label, key or function, format]. Formats: "hex" (addresses,
  // entries: as the SDM writes them), "count" (decimal), "text".
  function table(columns, rows, attrs) {
    if (!rows.length) return WH.el("p", {class: "na"}, "(empty)");
    const cell = (format, value) => {
      if (value === null || value === undefined) return WH.el("td", {class: "na"}, "—");
      if (format === "hex") return WH.el("td", {class: "hex"}, WH.hex(value));
      if (format === "count") return WH.el("td", {class: "num"}, WH.count(value));
      return WH.el("td", {}, String(value));
    };
    return WH.el("table", {class: "grid", ...(attrs || {})},
      WH.el("thead", {}, WH.el("tr", {}, columns.map(([label]) => WH.el("th", {}, label)))),
      WH.el("tbody", {}, rows.map((r) => WH.el("tr", {}, columns.map(([, key, format]) =>
        cell(format, typeof key === "function" ? key(r) : r[key]))))));
  }

  // Label/value pairs as a two-column table (a vCPU's TLB or L1D counters).
  function facts(pairs, attrs) {
    return WH.el("table", {class: "grid facts", ...(attrs || {})}, pairs.map(([label, value, format]) =>
      WH.el("tr", {}, WH.el("th", {}, label), WH.el("td", {class: format === "text" ? "" : "num"},
        format === "hex" ? WH.hex(value) : format === "text" ? value : WH.count(value)))));
  }

  const size = (bytes) => bytes >= 1 << 20 ? WH.count(bytes / (1 << 20)) + " MiB" : WH.count(bytes / 1024) + " KiB";
  const rwx = (p) => (p & 1 ? "R" : "-") + (p & 2 ? "W" : "-") + (p & 4 ? "X" : "-");
  const percent = (hits, misses) => hits + misses ? (100 * hits / (hits + misses)).toFixed(1) + " %" : "—";

  function renderEpt(view) {
    document.getElementById("ept").replaceChildren(optionalView("guest-physical map (bhyvectl --get-memmap)", view,
      (segments) => table([["segment", "name"], ["GPA", "gpa", "hex"], ["size", (s) => size(s.size)], ["HPA", "hpa", "hex"],
        ["prot", "prot"], ["resident 4 KiB pages", "populated", "count"], ["2 MiB superpages", "superpages", "count"]],
      segments, {id: "ept-map"})));
  }

  function tlbView(t) {
    return WH.el("div", {},
      facts([["host CPU", t.hostcpu], ["VPID", t.vpid], ["EPTP", t.eptp, "hex"], ["hits", t.hits], ["misses", t.misses],
        ["hit rate", percent(t.hits, t.misses), "text"], ["page walks", t.walks], ["guest flushes (INVLPG, CR3)", t.guest_flushes],
        ["INVEPT done", t.invept], ["INVEPT saved (eptgen)", t.invept_saved], ["INVVPID done", t.invvpid_done],
        ["INVVPID saved", t.invvpid_saved], ["entries held", t.entries + " of " + WH.count(t.capacity), "text"],
        ["flush generation", t.flush_generation]], {class: "grid facts tlb-facts"}),
      t.contents.length ? WH.el("h3", {}, "entries (first " + t.contents.length + ")") : "",
      table([["GLA", "linear", "hex"], ["GPA", "gpa", "hex"], ["HPA", "hpa", "hex"], ["VPID", "vpid", "count"],
        ["EPTP", "eptp", "hex"], ["perms", (e) => rwx(e.perms)], ["global", (e) => e.global ? "G" : ""]],
      t.contents, {class: "grid tlb-entries"}));
  }

  function l1dView(l) {
    return WH.el("div", {},
      facts([["host CPU", l.hostcpu], ["guest hits", l.guest_hits], ["guest misses", l.guest_misses],
        ["hit rate", percent(l.guest_hits, l.guest_misses), "text"], ["flushes by IA32_FLUSH_CMD", l.flushes_msr],
        ["software flushes (64 KiB read)", l.flushes_sw], ["flush cost", WH.count(l.flush_cycles) + " cycles", "text"],
        ["L1TF transient windows", l.l1tf_windows], ["free lines", l.free_lines]], {class: "grid facts l1d-facts"}),
      table([["holder", "owner"], ["lines", "lines", "count"]],
        Object.entries(l.occupancy).map(([owner, lines]) => ({owner, lines}))));
  }

  function renderCaches(c) {
    document.getElementById("caches").replaceChildren(
      ...c.tlb.map((v, i) => optionalView("TLB of vcpu" + i, v, tlbView)),
      ...c.l1d.map((v, i) => optionalView("L1D seen by vcpu" + i, v, l1dView)));
  }

  // -- PCI devices: each function's header, BARs, MSI-X table, virtio queues and counts (panels.devices) ------------
  const PCI_CLASSES = {0x060000: "host bridge", 0x010000: "SCSI storage controller", 0x020000: "Ethernet controller"};
  const VIRTIO_STATUS = [[1, "ACKNOWLEDGE"], [2, "DRIVER"], [8, "FEATURES_OK"], [4, "DRIVER_OK"], [64, "DEVICE_NEEDS_RESET"], [128, "FAILED"]];
  const DEVICE_COUNTS = {
    "virtio-blk": [["reads", "read"], ["writes", "write"], ["flushes", "flush"], ["discards", "discard"], ["GET_ID", "get_id"],
      ["errors (IOERR, UNSUPP)", "error"], ["bytes read", "read_bytes"], ["bytes written", "write_bytes"]],
  };
  const hexw = (value, digits) => BigInt(value).toString(16).padStart(digits, "0");
  const yes = (flag) => flag ? "yes" : "no";

  // Counts as a two-column table whose cells carry the count's name (after `prefix`) and raw value (data-count,
  // data-value).
  function counts(pairs, values, prefix) {
    return WH.el("table", {class: "grid facts pci-counts"}, pairs.map(([label, key]) => WH.el("tr", {},
      WH.el("th", {}, label), WH.el("td", {class: "num", "data-count": (prefix || "") + key, "data-value": values[key]},
        WH.count(values[key])))));
  }

  function netCounts(c, backend) {
    const row = (way, packets, bytes, drops) => ({way, packets: c[packets], bytes: c[bytes], drops});
    return WH.el("div", {}, table([["direction", "way"], ["packets", "packets", "count"], ["bytes", "bytes", "count"], ["drops", "drops", "count"]],
      [row("transmit (guest → switch)", "tx_frames", "tx_bytes", c.tx_bad),
        row("receive (switch → guest)", "rx_frames", "rx_bytes", c.rx_no_buffer + c.rx_small_buffer)], {class: "grid net-counts"}),
      WH.el("p", {class: "note"}, "transmit drops: chains too short or too long for a frame (" + WH.count(c.tx_bad) + "); receive drops: no buffer posted (" +
        WH.count(c.rx_no_buffer) + "), a buffer too small (" + WH.count(c.rx_small_buffer) + ")"),
      WH.el("h3", {}, "port " + backend.port + " on " + (backend.switch || "no switch") + " (the switch's counts: rx from the guest, tx to it)"),
      counts([["rx packets", "rx_packets"], ["rx bytes", "rx_bytes"], ["rx dropped", "rx_dropped"],
        ["tx packets", "tx_packets"], ["tx bytes", "tx_bytes"], ["tx dropped", "tx_dropped"]], backend.port_counts, "port."));
  }

  function virtioParts(f) {
    const v = f.virtio;
    const status = VIRTIO_STATUS.filter(([bit]) => v.status & bit).map(([, name]) => name).join(" ") || "0 (reset)";
    const parts = [WH.el("div", {}, WH.el("h3", {}, "virtio"), facts([["device status", status, "text"],
      ["features offered", v.offered, "hex"], ["features accepted", v.negotiated, "hex"],
      ["configuration vector", v.config_vector === 0xFFFF ? "none" : String(v.config_vector), "text"],
      ["needs reset because", v.broken || "—", "text"]])),
    WH.el("div", {}, WH.el("h3", {}, "virtqueues"), table([["queue", "index"], ["size", "size", "count"], ["enabled", (q) => yes(q.enabled)],
      ["vector", (q) => q.vector === 0xFFFF ? "none" : q.vector], ["avail idx (driver)", "avail_idx", "count"],
      ["next avail (device)", "last_avail_idx", "count"], ["used idx", "used_idx", "count"], ["doorbells", "kicks", "count"],
      ["descriptors", "desc", "hex"], ["avail ring", "driver", "hex"], ["used ring", "device", "hex"]], v.queues, {class: "grid virtqueues"}))];
    const emulation = f.backend && f.backend.emulation;
    if (DEVICE_COUNTS[emulation]) parts.push(WH.el("div", {}, WH.el("h3", {}, "requests"), counts(DEVICE_COUNTS[emulation], f.counts)));
    if (emulation === "virtio-net") parts.push(WH.el("div", {}, WH.el("h3", {}, "frames"), netCounts(f.counts, f.backend)));
    return parts;
  }

  function pciParts(f) {
    const pin = f.interrupt_pin ? "INT" + "ABCD"[f.interrupt_pin - 1] + "# → I/O APIC input " + f.interrupt_line + (f.intx ? " (asserted)" : "") : "none";
    const parts = [WH.el("div", {}, WH.el("h3", {}, "header"), facts([["subsystem", hexw(f.subsystem_vendor, 4) + ":" + hexw(f.subsystem, 4), "text"],
      ["revision", f.revision], ["command", f.command, "hex"], ["status", f.status, "hex"], ["INTx", pin, "text"]]))];
    if (f.bars) {
      parts.push(WH.el("div", {}, WH.el("h3", {}, "BARs"), table([["BAR", "index"], ["space", (b) => b.kind === "io" ? "I/O" : "memory (32-bit)"],
        ["address", "address", "hex"], ["size", (b) => size(b.size)], ["decoded", (b) => yes(b.enabled)]], f.bars, {class: "grid bars"})));
    }
    if (f.msix) {
      const m = f.msix;
      parts.push(WH.el("div", {}, WH.el("h3", {}, "MSI-X " + (m.enabled ? "enabled" : "disabled") + (m.function_masked ? ", function masked" : "")),
        table([["vector", "index"], ["address", "address", "hex"], ["data", "data", "hex"], ["masked", (e) => yes(e.masked)],
          ["pending", (e) => yes(e.pending)]], m.vectors, {class: "grid msix"})));
    }
    return f.virtio ? parts.concat(virtioParts(f)) : parts;
  }

  function backendText(b) {
    if (!b || b.emulation === "hostbridge") return "";
    if (b.emulation === "virtio-blk") return " " + b.image + (b.readonly ? " (read-only)" : "") + ", " + WH.count(b.capacity_sectors) + " sectors";
    return " " + b.mac + " on " + (b.switch || "no switch") + " (port " + b.port + ")";
  }

  function renderDevices(d) {
    const box = document.getElementById("devices");
    const open = new Set([...box.querySelectorAll("details[open]")].map((x) => x.dataset.bdf));
    const first = !box.children.length;
    box.replaceChildren(...d.functions.map((f) => {
      const emulation = f.backend ? f.backend.emulation : "";
      const title = f.bdf + " " + hexw(f.vendor, 4) + ":" + hexw(f.device, 4) + " class " + hexw(f["class"], 6) + " " +
        (PCI_CLASSES[f["class"]] || "") + " — " + emulation + backendText(f.backend);
      const details = WH.el("details", {class: "pci-function", "data-bdf": f.bdf}, WH.el("summary", {}, title),
        WH.el("div", {class: "pci-parts"}, pciParts(f)));
      details.open = first ? emulation !== "hostbridge" : open.has(f.bdf);
      return details;
    }));
    if (d.functions.length === 1) box.append(WH.el("p", {class: "na"}, "no devices but the host bridge: create a VM with -s slots to add some"));
  }

  function renderWalk(steps) {
    return table([["level", "level"], ["entry at HPA", "entry_hpa", "hex"], ["entry", "entry", "hex"], ["bits", "flags"]],
      steps, {id: "walk-table"});
  }

  function renderTranslation(t) {
    const facts_ = [["guest-linear", t.linear, "hex"]];
    if (t.gpa !== null) facts_.push(["guest-physical", t.gpa, "hex"]);
    if (t.hpa !== null) facts_.push(["host-physical", t.hpa, "hex"], ["permissions", rwx(t.perms || 0), "text"]);
    if (t.fault) facts_.push(["fault", t.fault, "text"]);
    return WH.el("div", {}, facts(facts_, {id: "translate-result", class: "grid facts"}),
      table([["stage", "stage"], ["level", "level"], ["entry at", (s) => s.entry_gpa !== undefined ? "GPA " + WH.hex(s.entry_gpa)
        : "HPA " + WH.hex(s.entry_hpa)], ["entry", "entry", "hex"]], t.steps, {id: "walk-table"}));
  }

  const RENDER = {summary: renderSummary, tunables: renderTunables, exits: renderHistogram, vga: renderVga,
    ept: renderEpt, caches: renderCaches, devices: renderDevices, graphs: Graphs.reset, rates: Graphs.add};

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

  const CONFIRM = {
    reset: ["Reset " + WH.vm + "? The guest reboots at once, as by the reset button: what it has not saved is lost.", "Reset"],
    poweroff: ["Power off " + WH.vm + "? The guest stops at once, as by pulling the plug; Start boots it afresh.", "Power off"],
  };
  document.querySelectorAll("button[data-action]").forEach((b) => b.addEventListener("click", async () => {
    const action = b.dataset.action;
    if (CONFIRM[action] && !await WH.confirm(...CONFIRM[action])) return;
    // Keys typed from here on go to the console, not to this button: Enter right after Resume would click it again.
    SerialConsole.term.focus();
    try {
      const s = await WH.api("POST", vmPath + "/" + action);
      renderSummary(s);
      WH.status(b.textContent + ": " + s.status);
    } catch (e) {
      WH.status(b.textContent + ": " + e.message, true);
    }
  }));

  // Snapshots of this VM: save in a dialog (name, power off after), the list of those saved from it.
  document.getElementById("snapshot").addEventListener("click", async () => {
    const data = await WH.ask(document.getElementById("snapshot-dialog"), (form) => {
      form.elements.name.value = WH.vm + "-" + new Date().toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
    });
    if (!data) return;
    const name = data.get("name");
    WH.status("saving snapshot " + name + "…");
    try {
      const saved = await WH.api("POST", vmPath + "/snapshot", {name, suspend: data.get("suspend") === "on"});
      WH.status("snapshot " + name + ": " + WH.count(saved.pages) + " pages saved in " + saved.seconds + " s");
    } catch (e) {
      WH.status("snapshot " + name + ": " + e.message, true);
    }
    refreshSnapshots();
    refreshSummary();
  });

  // Live migration (cluster mode): pick an up node other than the VM's; the progress comes as `migration` events.
  const migrate = document.getElementById("migrate");
  if (migrate) migrate.addEventListener("click", async () => {
    const {vms, nodes} = await WH.api("GET", "/vms");
    const here = (vms.find((v) => v.name === WH.vm) || {}).node;
    const data = await WH.ask(document.getElementById("migrate-dialog"), (form) => {
      form.elements.node.replaceChildren(...nodes.filter((n) => n.state === "up" && n.name !== here).map((n) =>
        WH.el("option", {value: n.name}, n.name + " (" + n.mem_free_mb + " MiB free, load " + n.load + ")")));
    });
    if (!data || !data.get("node")) return;
    WH.status("migrating " + WH.vm + " to " + data.get("node") + "…");
    try {
      const f = await WH.api("POST", vmPath + "/migrate", {node: data.get("node")});
      WH.status(migrationText(f));
    } catch (e) {
      WH.status("migration: " + e.message, true);
    }
    refreshSummary();
  });

  function migrationText(f) {
    if (f.phase === "failed") return "migration to " + f.node + " failed: " + f.error;
    if (f.phase === "done") return "migrated to " + f.node + " in " + f.total_s + " s: " + f.rounds.length + " rounds, " +
      WH.count(f.pages_sent) + " pages, " + WH.count(f.bytes_sent) + " bytes, downtime " + f.downtime_ms + " ms";
    return "migrating to " + f.node + ": " + f.phase + (f.rounds ? ", round " + f.rounds.length : "") +
      (f.dirty !== undefined ? ", " + WH.count(f.dirty) + " pages dirty" : "") +
      (f.bytes_sent ? ", " + WH.count(f.bytes_sent) + " bytes sent" : "");
  }

  async function refreshSnapshots() {
    const {snapshots} = await WH.api("GET", "/snapshots");
    const mine = snapshots.filter((s) => s.vm === WH.vm);
    document.querySelector("#vm-snapshots tbody").replaceChildren(...mine.map((s) => WH.el("tr", {"data-snapshot": s.name},
      WH.el("td", {}, s.name), WH.el("td", {}, s.saved_at ? new Date(s.saved_at * 1000).toLocaleString() : ""),
      WH.el("td", {class: "num"}, size(s.bytes)),
      WH.el("td", {}, WH.el("a", {href: "/"}, "restore from the list")))));
    document.getElementById("vm-snapshots").hidden = !mine.length;
    document.getElementById("no-vm-snapshots").hidden = mine.length > 0;
  }

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

  function walkForm(id, path, render) {
    document.getElementById(id).addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = event.target.querySelector("input");
      try {
        const r = await WH.api("GET", path() + "=" + encodeURIComponent(input.value));
        document.getElementById("ept-walk").replaceChildren(r.available ? render(r.value)
          : WH.el("p", {class: "na"}, "not available: " + r.reason));
      } catch (e) {
        WH.status(e.message, true);
      }
    });
  }
  walkForm("ept-lookup", () => vmPath + "/ept/lookup?gpa", renderWalk);
  walkForm("translate", () => vmPath + "/vcpus/" + (vcpuSelect.value || 0) + "/translate?gla", renderTranslation);

  refreshRecordings();
  refreshSnapshots();
  return {render, refreshRecordings, refreshSummary, refreshSnapshots, migrationText};
})();
