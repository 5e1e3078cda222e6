// The VM list: state and exit counts at a glance, lifecycle buttons, create from a bundled guest or an upload.
"use strict";

const ACTIONS = [["start", "Start"], ["pause", "Pause"], ["resume", "Resume"], ["reset", "Reset"], ["poweroff", "Power off"]];
const CONFIRM = {reset: "Reset %s? The guest reboots at once; what it has not saved is lost.",
  poweroff: "Power off %s? The guest stops at once, as by pulling the plug; Start boots it afresh."};

function row(vm) {
  const buttons = ACTIONS.map(([a, label]) => {
    const b = WH.el("button", {class: "control" + (CONFIRM[a] ? " danger" : ""), "data-action": a, onclick: async () => {
      if (!CONFIRM[a] || await WH.confirm(CONFIRM[a].replace("%s", vm.name), label)) act(vm.name, "POST", "/" + a);
    }}, label);
    b.disabled = !vm.actions.includes(a);
    if (b.disabled) b.title = label + " does not apply to a VM that is " + vm.status;
    return b;
  });
  buttons.push(WH.el("button", {class: "control", "data-action": "snapshot", onclick: () => snapshot(vm.name)}, "Snapshot…"));
  buttons.push(WH.el("button", {class: "control danger", "data-action": "destroy", onclick: async () =>
    await WH.confirm("Destroy " + vm.name + "? Its memory and console history go; snapshots stay.", "Destroy") && act(vm.name, "DELETE", "")}, "Destroy"));
  if (WH.role !== "control") buttons.forEach((b) => { b.disabled = true; });
  return WH.el("tr", {"data-vm": vm.name},
    WH.el("td", {}, WH.el("a", {href: "/vms/" + encodeURIComponent(vm.name)}, vm.name),
      vm.node ? WH.el("span", {class: "node", title: "the cluster node that runs it"}, " on " + vm.node) : ""),
    WH.el("td", {}, WH.el("span", {class: "state state-" + vm.state, title: vm.status_detail || ""}, vm.status),
      vm.uptime_s === null ? "" : WH.el("span", {class: "uptime"}, " up " + WH.duration(vm.uptime_s))),
    WH.el("td", {}, vm.image + " (" + vm.kind + ")"), WH.el("td", {}, vm.mem_mb + " MiB"), WH.el("td", {}, vm.cpus),
    WH.el("td", {}, vm.profile), WH.el("td", {class: "num"}, vm.exits.toLocaleString()), WH.el("td", {}, WH.el("span", {class: "actions"}, buttons)));
}

async function act(name, method, suffix) {
  try {
    await WH.api(method, "/vms/" + encodeURIComponent(name) + suffix);
    WH.status(name + ": done");
  } catch (e) {
    WH.status(name + ": " + e.message, true);
  }
  refresh();
}

async function refresh() {
  try {
    const {vms, nodes, cluster} = await WH.api("GET", "/vms");
    document.querySelector("#vms tbody").replaceChildren(...vms.map(row));
    document.getElementById("no-vms").hidden = vms.length > 0;
    if (cluster) showCluster(nodes, cluster);
  } catch (e) {
    WH.status(e.message, true);
  }
}

// Cluster mode (docs/cluster.md): the nodes with their load, and the cluster's trouble if it has any.
function showCluster(nodes, cluster) {
  const box = document.getElementById("cluster");
  box.hidden = false;
  box.classList.toggle("error", !cluster.ok);
  box.replaceChildren(cluster.message, ...nodes.map((n) => WH.el("span", {class: "cluster-node state-" + n.state},
    " · " + n.name + " " + n.state + ": " + n.vms + " VMs, " + n.mem_free_mb + "/" + n.mem_total_mb + " MiB free, load " +
    n.load + " on " + n.cpus + " CPUs")));
}

async function setupCreate() {
  const form = document.getElementById("create");
  if (!form) return;
  const {guests, kinds} = await WH.api("GET", "/guests");
  const LABELS = {linux: "Linux (Debian kernel + busybox)"};
  form.guest.replaceChildren(...guests.map((g) => WH.el("option", {value: g}, LABELS[g] || g)));
  form.guest.value = guests.includes("shell") ? "shell" : guests[0];
  // A bundled guest sets the kind it loads as (flat64 for a flat binary); an upload goes back to "detect".
  // The Linux guest needs 256 MiB and its serial console (api.py LINUX_MEM_MB, LINUX_CMDLINE).
  const followGuest = () => {
    form.kind.value = kinds[form.guest.value] || "";
    const linux = form.guest.value === "linux";
    form.mem_mb.value = linux ? 256 : 64;
    form.cmdline.value = linux ? "console=ttyS0 panic=-1" : "";
  };
  form.guest.addEventListener("change", followGuest);
  form.image.addEventListener("change", () => { if (form.image.files.length) form.kind.value = ""; });
  followGuest();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = jsonFields(form);
    const problem = document.getElementById("create-error");
    problem.hidden = true;
    try {
      if (form.image.files.length) {
        const data = new FormData(form);
        data.delete("guest");
        await WH.api("POST", "/vms", data);
      } else {
        await WH.api("POST", "/vms", fields);
      }
      WH.status(fields.name + " created");
      form.reset();
      form.guest.value = guests.includes("shell") ? "shell" : guests[0];
      followGuest();
    } catch (e) {
      WH.status("create " + fields.name + ": " + e.message, true);
      problem.textContent = "not created: " + e.message;      // beside the form, which keeps what was typed
      problem.hidden = false;
    }
    refresh();
  });
}

// The form as the API's JSON: numbers as numbers (the API takes no "64" for 64), an empty input left out, the
// PCI devices as a list of -s arguments (one a line; a multipart upload sends the lines and the server splits them).
function jsonFields(form) {
  const out = {};
  for (const [key, value] of new FormData(form).entries()) {
    if (key === "slots") {
      const lines = value.split("\n").map((s) => s.trim()).filter((s) => s);
      if (lines.length) out.slots = lines;
    } else if (typeof value === "string" && value !== "") {
      out[key] = form.elements[key].type === "number" ? Number(value) : value;
    }
  }
  return out;
}

// -- snapshots: save from a VM's row, restore or delete from the list ----------------------------------
async function snapshot(name) {
  const data = await WH.ask(document.getElementById("snapshot-dialog"), (form) => {
    document.getElementById("snapshot-vm").textContent = name;
    form.elements.name.value = name + "-" + new Date().toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
  });
  if (!data) return;
  const label = data.get("name");
  try {
    const saved = await WH.api("POST", "/vms/" + encodeURIComponent(name) + "/snapshot", {name: label, suspend: data.get("suspend") === "on"});
    WH.status(label + ": " + saved.pages + " pages saved in " + saved.seconds + " s");
  } catch (e) {
    WH.status("snapshot " + name + ": " + e.message, true);
  }
  refreshSnapshots();
}

async function snapshotAction(name, method, suffix, body) {
  try {
    await WH.api(method, "/snapshots/" + encodeURIComponent(name) + suffix, body);
    WH.status(name + ": done");
  } catch (e) {
    WH.status(name + ": " + e.message, true);
  }
  refreshSnapshots();
  refresh();
}

async function refreshSnapshots() {
  const {snapshots} = await WH.api("GET", "/snapshots");
  document.querySelector("#snapshots tbody").replaceChildren(...snapshots.map((s) => {
    const buttons = [
      WH.el("button", {class: "control", onclick: async () => {
        const data = await WH.ask(document.getElementById("restore-dialog"), (form) => {
          document.getElementById("restore-snapshot").textContent = s.name;
          form.elements.vm.value = (s.vm || "vm") + "-restored";
        });
        if (data) snapshotAction(s.name, "POST", "/restore", {vm: data.get("vm"), start: data.get("start") === "on"});
      }}, "restore"),
      WH.el("button", {class: "control danger", onclick: async () => await WH.confirm("Delete snapshot " + s.name + "?", "Delete")
        && snapshotAction(s.name, "DELETE", "")}, "delete")];
    if (WH.role !== "control" || !WH.admin) buttons.forEach((b) => { b.disabled = true; });
    return WH.el("tr", {"data-snapshot": s.name}, WH.el("td", {}, s.name), WH.el("td", {}, s.vm || s.error || "?"),
      WH.el("td", {}, s.mem_mb ? s.mem_mb + " MiB" : ""), WH.el("td", {}, s.cpus || ""),
      WH.el("td", {class: "num"}, s.bytes.toLocaleString()), WH.el("td", {}, buttons));
  }));
  document.getElementById("no-snapshots").hidden = snapshots.length > 0;
}

// -- demos: run one live, watch its progress and figures ------------------------------------------------
async function refreshDemos() {
  const {demos} = await WH.api("GET", "/demos");
  document.querySelector("#demos tbody").replaceChildren(...demos.map((d) => {
    const run = d.run;
    const progress = !run ? "" : run.state === "running" ? "step " + run.step + " of " + run.steps
      : run.state === "failed" ? "failed: " + run.error : "done";
    // a figure is a count, or {name: count} for a set of them (top_exits), shown as scenario.py's shown() does
    const shown = (v) => typeof v === "object" ? Object.entries(v).map(([name, n]) => name + " " + n).join(", ") : v;
    const figures = run && run.figures ? Object.entries(run.figures).map(([k, v]) => k + ": " + shown(v)).join("; ") : "";
    const button = WH.el("button", {class: "control", onclick: () => startDemo(d.name)}, "run");
    button.disabled = !WH.admin || (run && run.state === "running");
    return WH.el("tr", {"data-demo": d.name}, WH.el("td", {}, d.name), WH.el("td", {}, d.title),
      WH.el("td", {class: "demo-state"}, progress), WH.el("td", {class: "demo-figures"}, figures), WH.el("td", {}, button));
  }));
}

async function startDemo(name) {
  try {
    const started = await WH.api("POST", "/demos/" + encodeURIComponent(name));
    WH.status(name + " running as VM " + started.vm);
  } catch (e) {
    WH.status(name + ": " + e.message, true);
  }
  refreshDemos();
}

setupCreate();
refresh();
refreshSnapshots();
refreshDemos();
setInterval(refresh, 1000);
setInterval(refreshSnapshots, 3000);
setInterval(refreshDemos, 1000);
