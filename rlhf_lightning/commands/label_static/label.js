// The labelling page of `rlhf-lightning label` (the API is described in label_app.py).
// Model text (prompts, responses) is untrusted: it is only ever inserted with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN = new URLSearchParams(location.search).get("token");
const NAME_KEY = "rlhf-label:annotator";

let annotator = localStorage.getItem(NAME_KEY) || "";
let item = null; // the item shown: {item, round, prompt, version, candidates: [{key, text}]}
let order = []; // candidate keys, best first
let tied = new Set(); // keys tied with the candidate above them
let focusKey = null; // the candidate the keyboard commands act on
let busy = false; // a submission or a load is under way
let dragKey = null;

// --- helpers ----------------------------------------------------------------------------------------------
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function say(text, kind) {
  $("message").textContent = text || "";
  $("message").className = kind || "";
}

function show(section) {
  for (const id of ["login", "work", "done"]) $(id).hidden = id !== section;
  $("who").hidden = !annotator || section === "login";
}

async function api(method, path, body) {
  const headers = {};
  if (TOKEN) headers["X-Token"] = TOKEN;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) init.body = JSON.stringify(body);
    response = await fetch(path, init);
  } catch (error) {
    return { ok: false, status: 0, data: { error: "cannot reach the server (is it still running?)" } };
  }
  let data;
  try {
    data = await response.json();
  } catch (error) {
    data = { error: `the server answered ${response.status} ${response.statusText}` };
  }
  return { ok: response.ok, status: response.status, data };
}

// --- the order being built, kept in localStorage so a reload restores it ------------------------------------
function savedKey(shown) {
  return "rlhf-label:" + JSON.stringify([annotator, shown.item, shown.version]);
}

function save() {
  if (!item) return;
  const state = { order, tied: [...tied], none: $("none-acceptable").checked, comment: $("comment").value };
  localStorage.setItem(savedKey(item), JSON.stringify(state));
}

function forget(shown) {
  localStorage.removeItem(savedKey(shown));
}

function restore() {
  const keys = item.candidates.map((c) => c.key);
  order = keys.slice();
  tied = new Set();
  focusKey = null;
  $("none-acceptable").checked = false;
  $("comment").value = "";
  let state = null;
  try {
    state = JSON.parse(localStorage.getItem(savedKey(item)));
  } catch (error) {
    state = null;
  }
  const valid = state && Array.isArray(state.order) && state.order.length === keys.length;
  if (!valid || !keys.every((k) => state.order.includes(k))) return;
  order = state.order.slice();
  tied = new Set((state.tied || []).filter((k) => keys.includes(k)));
  $("none-acceptable").checked = state.none === true;
  $("comment").value = typeof state.comment === "string" ? state.comment : "";
}

function groups() {
  const out = [];
  order.forEach((key, i) => {
    if (i > 0 && tied.has(key)) out[out.length - 1].push(key);
    else out.push([key]);
  });
  return out;
}

// --- changing the order -----------------------------------------------------------------------------------
function moveTo(key, index) {
  const from = order.indexOf(key);
  if (from < 0 || index === from || index < 0 || index >= order.length) return;
  const below = order[from + 1];
  order.splice(from, 1);
  order.splice(index, 0, key);
  // a move unties the moved candidate and its neighbours, old and new
  for (const k of [key, below, order[index + 1]]) tied.delete(k);
  focusKey = key;
  changed();
}

function move(key, step) {
  moveTo(key, order.indexOf(key) + step);
}

function toggleTie(key) {
  if (order.indexOf(key) <= 0) return;
  if (tied.has(key)) tied.delete(key);
  else tied.add(key);
  focusKey = key;
  changed();
}

function changed() {
  save();
  render();
}

// --- drawing ------------------------------------------------------------------------------------------------
function button(label, title, onClick, disabled, pressed) {
  const b = el("button", "small", label);
  b.type = "button";
  b.title = title;
  b.setAttribute("aria-label", title);
  b.disabled = !!disabled;
  if (pressed !== undefined) b.setAttribute("aria-pressed", pressed ? "true" : "false");
  b.addEventListener("click", onClick);
  return b;
}

function render() {
  const list = $("candidates");
  const hadFocus = list.contains(document.activeElement);
  const texts = new Map(item.candidates.map((c) => [c.key, c.text]));
  list.replaceChildren();
  let rank = 0;
  order.forEach((key, i) => {
    const isTied = i > 0 && tied.has(key);
    const inTie = isTied || tied.has(order[i + 1]);
    if (!isTied) rank += 1;
    const li = el("li", "candidate" + (inTie ? " in-tie" : "") + (isTied ? " tied" : ""));
    li.tabIndex = 0;
    li.draggable = true;
    li.dataset.key = key;
    li.setAttribute("aria-label", `Rank ${rank}${inTie ? ", tied" : ""}: response ${key}`);
    li.setAttribute("aria-describedby", `text-${key}`);
    const head = el("div", "head");
    head.append(el("span", "rank", (inTie ? "=" : "") + rank), el("span", "key", `Response ${key}`));
    if (isTied) head.append(el("span", "tie-mark", "= tied with the one above"));
    const tools = el("span", "tools");
    tools.append(
      button("▲ Up", `Move response ${key} up`, () => move(key, -1), i === 0),
      button("▼ Down", `Move response ${key} down`, () => move(key, 1), i === order.length - 1),
      button("= Tie", `Tie response ${key} with the one above`, () => toggleTie(key), i === 0, isTied),
    );
    head.append(tools);
    const text = el("div", "text", texts.get(key));
    text.id = `text-${key}`;
    li.append(head, text);
    list.append(li);
  });
  if (hadFocus) focusCandidate(focusKey);
}

function focusCandidate(key) {
  const li = [...$("candidates").children].find((node) => node.dataset.key === key);
  if (li) li.focus();
}

// --- talking to the server ----------------------------------------------------------------------------------
async function loadProgress() {
  const r = await api("GET", `api/progress?annotator=${encodeURIComponent(annotator)}`);
  if (!r.ok) return;
  const p = r.data;
  const k = p.annotators_per_item;
  $("progress").textContent =
    `You: ${p.you ? p.you.done : 0} done · items complete ${p.complete} / ${p.items} ` +
    `(each asked of ${k} annotator${k === 1 ? "" : "s"})`;
  const people = Object.entries(p.annotators).filter(([, a]) => a.source === "human");
  $("team").textContent = people.length
    ? "Done per annotator: " + people.map(([name, a]) => `${name} ${a.ranked + a.skipped}`).join(", ")
    : "";
}

async function loadNext(message) {
  busy = true;
  try {
    const r = await api("GET", `api/next?annotator=${encodeURIComponent(annotator)}`);
    if (!r.ok) {
      say(`${message ? message + " " : ""}Cannot load the next item: ${r.data.error}`, "error");
      if (r.status === 400) show("login");
      return;
    }
    if (r.data.done) {
      item = null;
      show("done");
    } else {
      item = r.data;
      restore();
      $("prompt").textContent = item.prompt;
      $("item-info").textContent = `(item ${item.item}, round ${item.round})`;
      show("work");
      render();
      focusCandidate(order[0]);
    }
    say(message || "");
    loadProgress();
  } finally {
    busy = false;
  }
}

async function send(skip) {
  if (!item || busy) return;
  busy = true;
  const shown = item;
  const body = { annotator, item: shown.item, comment: $("comment").value };
  if (!skip) {
    Object.assign(body, { version: shown.version, ranking: groups(), none_acceptable: $("none-acceptable").checked });
  }
  say(skip ? "Skipping…" : "Saving…");
  const r = await api("POST", skip ? "api/skip" : "api/submit", body);
  busy = false;
  if (r.ok) {
    forget(shown);
    await loadNext(skip ? `Skipped item ${shown.item}.` : `Saved your ranking of item ${shown.item}.`);
  } else if (r.data.judgement) {
    forget(shown);
    await loadNext(`Item ${shown.item} was already saved earlier; nothing changed.`);
  } else if (r.status === 409) {
    forget(shown);
    await loadNext(`Item ${shown.item} changed while you ranked it (new responses): please rank it again.`);
  } else {
    say(`Not saved: ${r.data.error}. Your order is kept: try again.`, "error");
  }
}

// --- keys, drag and drop, buttons ---------------------------------------------------------------------------
function onKey(e) {
  const target = e.target;
  const typing = target instanceof HTMLTextAreaElement || (target instanceof HTMLInputElement && target.type !== "checkbox");
  if (typing) {
    if (e.key === "Escape" && target.id === "comment") {
      target.blur();
      focusCandidate(focusKey || order[0]);
    }
    return;
  }
  if (!item || $("work").hidden || e.ctrlKey || e.metaKey) return;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  const up = key === "ArrowUp" || key === "k";
  const down = key === "ArrowDown" || key === "j";
  const i = order.indexOf(focusKey);
  if ((up || down) && key.startsWith("Arrow") && (e.altKey || e.shiftKey)) {
    if (i >= 0) move(focusKey, up ? -1 : 1);
  } else if (up || down) {
    const next = i < 0 ? 0 : Math.max(0, Math.min(order.length - 1, i + (up ? -1 : 1)));
    focusCandidate(order[next]);
  } else if (key === "t") {
    if (focusKey) toggleTie(focusKey);
  } else if (key === "n") {
    $("none-acceptable").checked = !$("none-acceptable").checked;
    save();
  } else if (key === "c") {
    $("comment").focus();
  } else if (key === "s") {
    send(true);
  } else if (key === "Enter" && !(target instanceof HTMLButtonElement)) {
    send(false);
  } else {
    return;
  }
  e.preventDefault();
}

function candidateOf(e) {
  return e.target instanceof Element ? e.target.closest("li.candidate") : null;
}

function dropBefore(e, li) {
  const box = li.getBoundingClientRect();
  return e.clientY < box.top + box.height / 2;
}

function clearDropMarks() {
  for (const li of $("candidates").children) li.classList.remove("drop-before", "drop-after", "dragging");
}

function wireDragAndDrop(list) {
  list.addEventListener("dragstart", (e) => {
    const li = candidateOf(e);
    if (!li) return;
    dragKey = li.dataset.key;
    e.dataTransfer.effectAllowed = "move";
    e.dataTransfer.setData("text/plain", dragKey);
    li.classList.add("dragging");
  });
  list.addEventListener("dragover", (e) => {
    const li = candidateOf(e);
    if (!dragKey || !li) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "move";
    const before = dropBefore(e, li);
    for (const node of list.children) node.classList.remove("drop-before", "drop-after");
    if (li.dataset.key !== dragKey) li.classList.add(before ? "drop-before" : "drop-after");
  });
  list.addEventListener("drop", (e) => {
    const li = candidateOf(e);
    if (!dragKey || !li) return;
    e.preventDefault();
    const from = order.indexOf(dragKey);
    let to = order.indexOf(li.dataset.key) + (dropBefore(e, li) ? 0 : 1);
    if (from < to) to -= 1;
    const key = dragKey;
    dragKey = null;
    clearDropMarks();
    moveTo(key, to);
  });
  list.addEventListener("dragend", () => {
    dragKey = null;
    clearDropMarks();
  });
  list.addEventListener("focusin", (e) => {
    const li = candidateOf(e);
    if (li) focusKey = li.dataset.key;
  });
}

function start() {
  if (!annotator) {
    show("login");
    $("name-input").focus();
    return;
  }
  $("who-name").textContent = annotator;
  loadNext();
}

$("name-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("name-input").value.trim();
  if (!name) return;
  annotator = name;
  localStorage.setItem(NAME_KEY, name);
  start();
});
$("change-name").addEventListener("click", () => {
  $("name-input").value = annotator;
  show("login");
  $("name-input").focus();
});
$("submit").addEventListener("click", () => send(false));
$("skip").addEventListener("click", () => send(true));
$("check-again").addEventListener("click", () => loadNext());
$("none-acceptable").addEventListener("change", save);
$("comment").addEventListener("input", save);
document.addEventListener("keydown", onKey);
wireDragAndDrop($("candidates"));
start();
