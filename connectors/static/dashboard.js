// The live alert feed: one EventSource on the feed page; each `alert` event adds or updates a row.
"use strict";

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function rupiah(amount) {
  return "Rp " + amount.toLocaleString("id-ID");
}

function alertRow(a) {
  const tr = document.createElement("tr");
  tr.id = "alert-" + a.alert_id;
  tr.dataset.alertId = a.alert_id;
  tr.append(
    cell(a.raised_at.slice(0, 19).replace("T", " ")), cell(a.rule_id), cell(a.regency_name),
    cell(a.programme_code), cell(a.period), cell(rupiah(a.amount_idr_at_stake), "num"),
    cell(a.case_status, "status status-" + a.case_status), cell(a.status));
  const link = document.createElement("a");
  link.href = "/alerts/" + encodeURIComponent(a.alert_id);
  link.textContent = a.message;
  const td = document.createElement("td");
  td.append(link);
  tr.append(td);
  return tr;
}

function startFeed(url) {
  const table = document.querySelector("#alerts tbody");
  const state = document.getElementById("live");
  const source = new EventSource(url);
  source.addEventListener("ready", () => {
    state.textContent = "live";
    document.body.dataset.live = "on";
  });
  source.addEventListener("alert", (message) => {
    const a = JSON.parse(message.data);
    const row = alertRow(a);
    const old = document.getElementById(row.id);
    if (old) old.replaceWith(row); else table.prepend(row);
    row.classList.add("fresh");
  });
  source.onerror = () => {
    state.textContent = "reconnecting";
    document.body.dataset.live = "off";
  };
}

document.addEventListener("DOMContentLoaded", () => {
  const url = document.body.dataset.feed;
  if (url) startFeed(url);
});
