// Renders the Details object pushed by `bento-tray details` (see src/model.rs).
// Text only goes through textContent: nothing from the agent is parsed as HTML.
"use strict";

const { invoke } = window.__TAURI__.core;
const { listen } = window.__TAURI__.event;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function conditionClass(c) {
  // Condition serializes as "up-to-date" or {"busy": "checking"}.
  return typeof c === "string" ? c : "busy";
}

function render(d) {
  document.getElementById("badge").className = "badge " + conditionClass(d.condition);
  document.getElementById("headline").textContent = d.headline;
  const who = d.host ? "Computer " + d.host + "\n" : "";
  document.getElementById("summary").textContent = who + d.summary.join("\n");
  // The revision stays here for whoever has to quote it; people read the version.
  const ids = [];
  if (d.revision) ids.push("Revision " + d.revision);
  if (d.system) ids.push("System " + d.system);
  if (d.obtained) ids.push(d.obtained);
  document.getElementById("revision").textContent = ids.join("\n");
  document.getElementById("reboot").textContent = d.reboot || "—";

  const rows = document.getElementById("updates");
  rows.replaceChildren(...d.updates.map((u) => {
    const tr = el("tr");
    tr.append(el("td", u.when), el("td", u.result, u.ok ? "ok" : "bad"),
      el("td", u.version), el("td", u.revision, "rev"), el("td", u.note));
    return tr;
  }));
  const none = document.getElementById("no-updates");
  none.textContent = d.no_updates;
  none.hidden = d.updates.length > 0;

  document.getElementById("changes").replaceChildren(...d.changes.map((c) => el("li", c)));
  document.getElementById("no-changes").hidden = d.changes.length > 0;

  const log = document.getElementById("log");
  log.textContent = d.log_tail.length ? d.log_tail.join("\n") : "No log yet.";
  log.scrollTop = log.scrollHeight;

  invoke("rendered", { headline: d.headline, rows: d.updates.length, text: document.body.innerText })
    .catch(() => {});
}

// Pushed updates win over the first snapshot if they arrive before it.
let pushed = false;
listen("details", (e) => {
  pushed = true;
  render(e.payload);
});
invoke("snapshot").then((d) => {
  if (!pushed) render(d);
});
