// The VM list: state and exit counts at a glance, lifecycle buttons, create from a bundled guest or an upload.
"use strict";

const ACTIONS = ["start", "pause", "resume", "reset", "poweroff"];

function row(vm) {
  const buttons = ACTIONS.map((a) => WH.el("button", {class: "control", onclick: () => act(vm.name, "POST", "/" + a)}, a));
  buttons.push(WH.el("button", {class: "control danger", onclick: () => confirm("Destroy " + vm.name + "?") && act(vm.name, "DELETE", "")}, "destroy"));
  if (WH.role !== "control") buttons.forEach((b) => { b.disabled = true; });
  return WH.el("tr", {"data-vm": vm.name},
    WH.el("td", {}, WH.el("a", {href: "/vms/" + encodeURIComponent(vm.name)}, vm.name)),
    WH.el("td", {class: "state state-" + vm.state, title: vm.suspend_message || ""}, vm.state),
    WH.el("td", {}, vm.image + " (" + vm.kind + ")"), WH.el("td", {}, vm.mem_mb + " MiB"), WH.el("td", {}, vm.cpus),
    WH.el("td", {}, vm.profile), WH.el("td", {class: "num"}, vm.exits.toLocaleString()), WH.el("td", {}, buttons));
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
    const {vms} = await WH.api("GET", "/vms");
    document.querySelector("#vms tbody").replaceChildren(...vms.map(row));
    document.getElementById("no-vms").hidden = vms.length > 0;
  } catch (e) {
    WH.status(e.message, true);
  }
}

async function setupCreate() {
  const form = document.getElementById("create");
  if (!form) return;
  const {guests} = await WH.api("GET", "/guests");
  form.guest.replaceChildren(...guests.map((g) => WH.el("option", {}, g)));
  form.guest.value = guests.includes("shell") ? "shell" : guests[0];
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = Object.fromEntries(new FormData(form).entries());
    try {
      if (form.image.files.length) {
        const data = new FormData(form);
        data.delete("guest");
        await WH.api("POST", "/vms", data);
      } else {
        delete fields.image;
        await WH.api("POST", "/vms", fields);
      }
      WH.status(fields.name + " created");
      form.reset();
      form.guest.value = guests.includes("shell") ? "shell" : guests[0];
    } catch (e) {
      WH.status("create " + fields.name + ": " + e.message, true);
    }
    refresh();
  });
}

setupCreate();
refresh();
setInterval(refresh, 1000);
