// Fleetboot's web view: plain JavaScript written for this page, nothing loaded from elsewhere.
// It reads the management API (/api/v1) with the token the operator entered once (kept in
// sessionStorage; a same-site cookie carries it for EventSource, which cannot send headers)
// and follows /api/v1/events (server-sent events) to update states without reloading.
"use strict";

const API = "/api/v1";
const PAGE = 100;
const TOKEN_KEY = "fleetboot_token";

const ui = { view: null, node: null, filter: { state: "", q: "" }, shown: 0, events: null };

// --- small helpers ------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function main(...children) {
  const m = document.getElementById("main");
  m.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  return m;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function stateBadge(doc) {
  const span = h("span", { class: `state ${doc.state}`, "data-state": doc.state }, doc.state);
  return doc.stuck ? h("span", {}, span, h("span", { class: "stuck" }, "STUCK")) : span;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function setToken(value) {
  if (value) {
    sessionStorage.setItem(TOKEN_KEY, value);
    document.cookie = `${TOKEN_KEY}=${encodeURIComponent(value)}; path=/; SameSite=Strict`;
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
    document.cookie = `${TOKEN_KEY}=; path=/; max-age=0; SameSite=Strict`;
  }
}

class Unauthorized extends Error {}

async function api(path, params) {
  const url = new URL(API + path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null) url.searchParams.set(k, v);
  const r = await fetch(url, { headers: { authorization: `Bearer ${token()}` } });
  if (r.status === 401) throw new Unauthorized((await r.json()).error);
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
  return r.json();
}

// --- login --------------------------------------------------------------------------------

function showLogin(message) {
  stopEvents();
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const input = h("input", { id: "token", type: "password", autocomplete: "off",
                             placeholder: "fbt_..." });
  const error = h("p", { class: "error", id: "login-error" }, message || "");
  const form = h("form", { class: "card login", id: "login-form", onsubmit: async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    try {
      await start();
    } catch (err) {
      setToken(null);
      error.textContent = err.message;
    }
  } },
  h("h1", {}, "Log in"),
  h("label", { for: "token" }, "API token (", h("code", {}, "fleetboot token create NAME"), ")"),
  input, h("button", { id: "login", type: "submit" }, "Log in"), error);
  main(form);
  input.focus();
}

async function start() {
  const me = await api("/whoami");
  document.getElementById("who").textContent = `${me.name} (${me.role})`;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  startEvents();
  await route();
}

// --- live updates -------------------------------------------------------------------------

function startEvents() {
  stopEvents();
  const es = new EventSource(API + "/events");
  const dot = document.getElementById("live");
  es.onopen = () => dot.classList.add("on");
  es.onerror = () => dot.classList.remove("on");
  es.addEventListener("state", (e) => onState(JSON.parse(e.data)));
  es.addEventListener("counts", (e) => onCounts(JSON.parse(e.data)));
  es.addEventListener("reload", () => route());  // we fell behind: redraw from the API
  ui.events = es;
}

function stopEvents() {
  if (ui.events) ui.events.close();
  ui.events = null;
}

function onState(doc) {
  const row = document.querySelector(`tr[data-node="${CSS.escape(doc.name)}"]`);
  if (row) fillNodeRow(row, doc);
  if (ui.view === "node" && ui.node === doc.name) {
    const badge = document.getElementById("node-state");
    if (badge) badge.replaceChildren(stateBadge(doc));
    const since = document.getElementById("node-since");
    if (since) since.textContent = ago(doc.since);
    loadWaterfall(doc.name);
  }
}

function onCounts(counts) {
  for (const [state, n] of Object.entries(counts)) {
    const b = document.querySelector(`.chip[data-state="${state}"] b`);
    if (b) b.textContent = n;
  }
  const all = document.querySelector('.chip[data-state=""] b');
  if (all) all.textContent = Object.values(counts).reduce((a, b) => a + b, 0);
}

// --- the fleet ----------------------------------------------------------------------------

function fillNodeRow(row, n) {
  row.replaceChildren(
    h("td", {}, h("a", { href: `#/node/${encodeURIComponent(n.name)}` }, n.name)),
    h("td", { class: "cell-state" }, stateBadge(n)),
    h("td", {}, ago(n.since)),
    h("td", {}, n.address || "-"),
    h("td", { class: "hide-sm" }, n.last_boot_s === null ? "-" : `${n.last_boot_s.toFixed(1)} s`),
    h("td", { class: "hide-sm muted" }, n.message || ""));
}

async function showFleet() {
  ui.view = "fleet";
  const chips = h("div", { class: "chips", id: "chips" });
  const search = h("input", { id: "search", type: "search", placeholder: "name contains...",
                              value: ui.filter.q });
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { ui.filter.q = search.value.trim(); loadNodes(true); }, 250);
  });
  const body = h("tbody", { id: "nodes" });
  const more = h("button", { id: "more", hidden: true, onclick: () => loadNodes(false) }, "More");
  main(h("h1", {}, "Fleet ", h("span", { class: "muted", id: "total" })), chips,
       h("div", { class: "filters" }, search),
       h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {},
         h("th", {}, "node"), h("th", {}, "state"), h("th", {}, "since"), h("th", {}, "address"),
         h("th", { class: "hide-sm" }, "last boot"), h("th", { class: "hide-sm" }, "note"))), body)),
       more);
  await loadNodes(true);
}

function drawChips(counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const chip = (state, label, n) => h("span", {
    class: "chip" + (ui.filter.state === state ? " selected" : ""), "data-state": state,
    onclick: () => { ui.filter.state = state; loadNodes(true); } }, label, h("b", {}, n));
  document.getElementById("chips").replaceChildren(
    chip("", "all", total), ...Object.keys(counts).map((s) => chip(s, s, counts[s])));
}

async function loadNodes(reset) {
  if (reset) ui.shown = 0;
  const page = await api("/nodes", { limit: PAGE, offset: ui.shown, state: ui.filter.state,
                                     q: ui.filter.q });
  const body = document.getElementById("nodes");
  if (!body) return;
  if (reset) body.replaceChildren();
  for (const n of page.items) {
    const row = h("tr", { "data-node": n.name });
    fillNodeRow(row, n);
    body.append(row);
  }
  ui.shown += page.items.length;
  drawChips(page.counts);
  document.getElementById("total").textContent = `${page.total} node(s)`;
  document.getElementById("more").hidden = ui.shown >= page.total;
}

// --- one node -----------------------------------------------------------------------------

async function showNode(name) {
  ui.view = "node";
  ui.node = name;
  const [node, why, leases, config] = await Promise.all([
    api(`/nodes/${encodeURIComponent(name)}`), api(`/nodes/${encodeURIComponent(name)}/why`),
    api("/leases", { node: name }), api(`/nodes/${encodeURIComponent(name)}/config`)]);
  const levels = Object.entries(why.levels).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]);
  main(
    h("h1", {}, node.name, " ", h("span", { id: "node-state" }, stateBadge(node))),
    h("div", { class: "card" }, h("dl", { class: "kv" },
      h("dt", {}, "since"), h("dd", { id: "node-since" }, ago(node.since)),
      h("dt", {}, "address"), h("dd", {}, node.address || "-"),
      h("dt", {}, "arch"), h("dd", {}, node.arch),
      h("dt", {}, "boot number"), h("dd", {}, node.boot_number),
      h("dt", {}, "interfaces"), h("dd", {}, node.interfaces.map(
        (i) => `${i.mac}${i.name ? " (" + i.name + ")" : ""}${i.boot ? " boot" : ""}`).join(", ")),
      h("dt", {}, "message"), h("dd", {}, node.message || "-"))),
    h("h2", {}, "Boot waterfall ", h("span", { class: "muted", id: "wf-title" })),
    h("div", { class: "card waterfall", id: "waterfall" }, "loading..."),
    h("h2", {}, "Why it boots what it boots"),
    h("div", { class: "card", id: "why" }, h("p", {}, h("b", {}, node.name), ` boots ${why.boots}`),
      h("dl", { class: "kv" }, levels),
      why.profile_detail ? h("p", { class: "muted" }, `profile ${why.profile}: ${why.profile_detail}`) : null),
    h("h2", {}, "Leases"),
    h("div", { class: "scroll" }, h("table", { id: "leases" }, h("tr", {},
      h("th", {}, "address"), h("th", {}, "MAC"), h("th", {}, "subnet"), h("th", {}, "expires")),
      leases.items.map((l) => h("tr", {}, h("td", {}, l.address), h("td", {}, l.mac),
        h("td", {}, l.subnet || "-"), h("td", {}, new Date(l.expires * 1000).toLocaleString()))))),
    h("h2", {}, "Configuration document"),
    h("pre", { id: "config" }, JSON.stringify(config, null, 2)));
  await loadWaterfall(name);
}

let waterfallBusy = false;

async function loadWaterfall(name) {
  if (waterfallBusy) return;
  waterfallBusy = true;
  try {
    const tl = await api(`/nodes/${encodeURIComponent(name)}/timeline`);
    const box = document.getElementById("waterfall");
    if (!box || ui.node !== name) return;
    if (!tl.events.length) { box.replaceChildren("no recorded events"); return; }
    const span = Math.max(...tl.events.map((e) => e.offset_s + (e.duration_s || 0)), 0.001);
    document.getElementById("wf-title").textContent =
      `boot ${tl.boot}, ${span.toFixed(1)} s, ${tl.events.length} events`;
    box.replaceChildren(...tl.events.map((e) => {
      const left = (100 * e.offset_s) / span;
      const width = Math.max((100 * (e.duration_s || 0)) / span, 0.4);
      const what = e.detail && (e.detail.path || e.detail.file || e.detail.state || e.detail.section);
      return h("div", { class: "wf-row" },
        h("span", { class: "muted" }, `+${e.offset_s.toFixed(2)}`),
        h("span", { class: "wf-label", title: JSON.stringify(e.detail) },
          `${e.source} ${e.kind}${what ? " " + what : ""}`),
        h("div", { class: "wf-track" }, h("span", {
          class: `bar ${e.source}`, style: `left:${left.toFixed(2)}%;width:${width.toFixed(2)}%`,
          title: `${e.duration_s ? e.duration_s.toFixed(3) + " s" : "instant"}` })));
    }));
  } finally {
    waterfallBusy = false;
  }
}

// --- pools, VMs, audit --------------------------------------------------------------------

async function showPools() {
  ui.view = "pools";
  const pools = await api("/pools");
  main(h("h1", {}, "Pool use per subnet"),
    pools.length ? pools.map((p) => h("div", { class: "card pool", "data-subnet": p.subnet },
      h("div", {}, h("b", {}, p.subnet), ` ${p.cidr}  ${p.start} - ${p.end}: `,
        h("span", { class: "used" }, `${p.leased} of ${p.size} leased (${p.percent}%)`)),
      h("div", { class: "meter" }, h("span", { style: `width:${p.percent}%` }))))
    : h("p", { class: "muted" }, "no pools"));
}

async function showVms() {
  ui.view = "vms";
  const vms = await api("/vms");
  main(h("h1", {}, "VMs"), h("div", { class: "scroll" }, h("table", {}, h("tr", {},
    h("th", {}, "vm"), h("th", {}, "status"), h("th", {}, "machine"), h("th", {}, "slots")),
    vms.map((v) => h("tr", {}, h("td", {}, h("a", { href: `#/vm/${encodeURIComponent(v.name)}` }, v.name)),
      h("td", {}, v.status), h("td", {}, v.machine_type), h("td", {}, h("code", {}, v.slot_map)))))));
}

async function showVm(name) {
  ui.view = "vm";
  const vm = await api(`/vms/${encodeURIComponent(name)}`);
  const pools = {};
  for (const s of vm.slots) (pools[s.pool] = pools[s.pool] || []).push(s);
  main(h("h1", {}, `${vm.name} `, h("span", { class: "muted" }, `${vm.status}, ${vm.machine_type}`)),
    h("p", {}, "slot map ", h("code", {}, vm.slot_map)),
    h("div", { class: "slots", id: "slot-map" }, Object.entries(pools).map(([pool, slots]) =>
      h("div", { class: "slot-pool", "data-pool": pool }, h("h3", {}, `${pool} pool`),
        h("div", { class: "slot-grid" }, slots.map((s) => h("div", {
          class: `slot ${s.state}`, title: s.root_port || "" },
          h("div", { class: "addr" }, s.address), h("div", {}, s.device || "free"),
          s.device ? h("div", { class: "muted" }, `${s.kind}, ${s.state}`) : null)))))));
}

async function showAudit() {
  ui.view = "audit";
  const entries = await api("/audit", { limit: 100 });
  main(h("h1", {}, "Audit log"), h("div", { class: "scroll" }, h("table", {}, h("tr", {},
    h("th", {}, "when"), h("th", {}, "actor"), h("th", {}, "action"), h("th", {}, "what"),
    h("th", { class: "hide-sm" }, "via")),
    entries.map((e) => h("tr", {}, h("td", {}, new Date(e.at * 1000).toLocaleString()),
      h("td", {}, e.actor), h("td", {}, e.action), h("td", {}, `${e.kind} ${e.target}`),
      h("td", { class: "hide-sm muted" }, e.via))))));
}

// --- routing ------------------------------------------------------------------------------

async function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [, page, arg] = hash.split("/");
  ui.node = null;
  document.querySelectorAll("nav a").forEach((a) =>
    a.classList.toggle("active", a.getAttribute("href") === `#/${page || ""}`));
  try {
    if (page === "node" && arg) await showNode(decodeURIComponent(arg));
    else if (page === "pools") await showPools();
    else if (page === "vms") await showVms();
    else if (page === "vm" && arg) await showVm(decodeURIComponent(arg));
    else if (page === "audit") await showAudit();
    else await showFleet();
  } catch (err) {
    if (err instanceof Unauthorized) { setToken(null); showLogin(err.message); return; }
    main(h("p", { class: "error" }, err.message));
  }
}

window.addEventListener("hashchange", () => { if (token()) route(); });
document.getElementById("logout").addEventListener("click", () => { setToken(null); showLogin(); });

if (token()) start().catch((err) => { setToken(null); showLogin(err.message); });
else showLogin();
