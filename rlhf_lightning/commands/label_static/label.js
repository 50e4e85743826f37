// The labelling page of `rlhf-lightning label` (the API is described in label_app.py).
// Model text (prompts, responses) is untrusted: it is only ever inserted as text nodes (showText, textContent),
// with its direction control characters shown as marks rather than applied.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN = new URLSearchParams(location.search).get("token");
const NAME_KEY = "rlhf-label:annotator";

let annotator = localStorage.getItem(NAME_KEY) || "";
// the item shown: {item, round, prompt, conversation, tools, version, candidates: [{key, text, cut_off}]}
let item = null;
let order = []; // candidate keys, best first
let tied = new Set(); // keys tied with the candidate above them
let touched = false; // the annotator moved or tied a response of this item (the shown order is random)
let confirming = false; // Submit was pressed on an untouched item: a second press submits the shown order
let expanded = new Set(); // keys of long responses shown in full
let focusKey = null; // the candidate the keyboard commands act on
let busy = false; // a submission or a load is under way
let dragKey = null;
let lastSkip = null; // {item, version, state}: the skip the Undo button takes back, and the work done before it

// --- helpers ----------------------------------------------------------------------------------------------
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Direction control characters (embeddings, overrides, isolates, marks) would let a text reorder how it and
// its neighbours are displayed (U+202E shows "abc\u202Edef" as "abcfed"): they are shown as marks instead.
const BIDI_CONTROLS = /[\u202A-\u202E\u2066-\u2069\u200E\u200F\u061C]/g;
const BIDI_NAMES = {
  "\u202A": "LRE", "\u202B": "RLE", "\u202C": "PDF", "\u202D": "LRO", "\u202E": "RLO", "\u2066": "LRI",
  "\u2067": "RLI", "\u2068": "FSI", "\u2069": "PDI", "\u200E": "LRM", "\u200F": "RLM", "\u061C": "ALM",
};

function showText(node, text) {
  node.replaceChildren();
  node.dir = "auto";
  let at = 0;
  for (const match of text.matchAll(BIDI_CONTROLS)) {
    if (match.index > at) node.append(text.slice(at, match.index));
    const code = match[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
    const mark = el("span", "bidi-mark", `⟨${BIDI_NAMES[match[0]]}⟩`);
    mark.title = `U+${code}: a text-direction control character in the text, shown here instead of applied`;
    node.append(mark);
    at = match.index + match[0].length;
  }
  if (at < text.length) node.append(text.slice(at));
  return node;
}

function textBlock(className, text) {
  return showText(el("div", className), text);
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
  localStorage.setItem(savedKey(item), JSON.stringify(currentState()));
}

function currentState() {
  return { order, tied: [...tied], touched, none: $("none-acceptable").checked, comment: $("comment").value };
}

function forget(shown) {
  localStorage.removeItem(savedKey(shown));
}

function restore() {
  const keys = item.candidates.map((c) => c.key);
  order = keys.slice();
  tied = new Set();
  touched = false;
  confirming = false;
  expanded = new Set();
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
  touched = state.touched === true || tied.size > 0 || order.some((k, i) => k !== keys[i]);
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
  touched = true;
  if (confirming) {
    confirming = false;
    setSubmitLabel();
    say("");
  }
  save();
  render();
}

function toggleExpanded(key) {
  if (expanded.has(key)) expanded.delete(key);
  else expanded.add(key);
  focusKey = key;
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
  const byKey = new Map(item.candidates.map((c) => [c.key, c]));
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
    const candidate = byKey.get(key);
    const cutOff = candidate.cut_off === true;
    const label = `Rank ${rank}${inTie ? ", tied" : ""}: response ${key}${cutOff ? ", cut off" : ""}`;
    li.setAttribute("aria-label", label);
    li.setAttribute("aria-describedby", `text-${key}`);
    const head = el("div", "head");
    head.append(el("span", "rank", (inTie ? "=" : "") + rank), el("span", "key", `Response ${key}`));
    if (cutOff) {
      const mark = el("span", "cut-off", "✂ cut off");
      mark.title = "This answer reached the length limit before the model ended it: it is unfinished";
      head.append(mark);
    }
    if (isTied) head.append(el("span", "tie-mark", "= tied with the one above"));
    const tools = el("span", "tools");
    tools.append(
      button("▲ Up", `Move response ${key} up`, () => move(key, -1), i === 0),
      button("▼ Down", `Move response ${key} down`, () => move(key, 1), i === order.length - 1),
      button("= Tie", `Tie response ${key} with the one above`, () => toggleTie(key), i === 0, isTied),
    );
    head.append(tools);
    const text = textBlock("text", candidate.text);
    text.id = `text-${key}`;
    li.classList.toggle("expanded", expanded.has(key));
    li.append(head, text);
    list.append(li);
    // a long response is shown in a box of its own height (it scrolls); "Show all" lets it grow
    if (expanded.has(key) || text.scrollHeight > text.clientHeight + 1) {
      const full = expanded.has(key);
      const toggle = button(full ? "Show less" : "Show all", `${full ? "Shorten" : "Show all of"} response ${key} (e)`,
        () => toggleExpanded(key), false);
      toggle.classList.add("expand");
      toggle.setAttribute("aria-expanded", full ? "true" : "false");
      tools.prepend(toggle);
    }
  });
  if (hadFocus) focusCandidate(focusKey);
}

const ROLE_NAMES = { system: "System", user: "User", assistant: "Assistant", tool: "Tool" };

function renderConversation() {
  const turns = Array.isArray(item.conversation) && item.conversation.length
    ? item.conversation
    : [{ role: "user", content: item.prompt }];
  const list = $("conversation");
  list.replaceChildren();
  turns.forEach((turn, i) => {
    const role = typeof turn.role === "string" ? turn.role : "";
    const final = i === turns.length - 1;
    const li = el("li", `turn role-${ROLE_NAMES[role] ? role : "other"}${final ? " final" : ""}`);
    const head = el("div", "turn-head");
    let label = ROLE_NAMES[role] || role;
    if (role === "tool" && typeof turn.name === "string") label += ` (${turn.name})`;
    head.append(showText(el("span", "role"), label));
    if (final && turns.length > 1) head.append(el("span", "muted", "the turn the responses answer"));
    li.append(head);
    const text = textBlock("text", typeof turn.content === "string" ? turn.content : "");
    if (final) text.id = "prompt";
    li.append(text);
    for (const call of Array.isArray(turn.tool_calls) ? turn.tool_calls : []) {
      const fn = call && typeof call.function === "object" && call.function ? call.function : call || {};
      const box = el("div", "call");
      box.append(showText(el("div", "call-name"), `Calls the tool ${fn.name}`));
      box.append(textBlock("text code", JSON.stringify(fn.arguments ?? {}, null, 2)));
      li.append(box);
    }
    list.append(li);
    // an earlier turn longer than a few lines is folded: its first lines and a "Show all" toggle
    if (!final) {
      text.classList.add("clipped");
      if (text.scrollHeight > text.clientHeight + 1) {
        const toggle = el("button", "small toggle", "Show all");
        toggle.type = "button";
        toggle.setAttribute("aria-expanded", "false");
        toggle.addEventListener("click", () => {
          const open = text.classList.toggle("clipped") === false;
          toggle.textContent = open ? "Show less" : "Show all";
          toggle.setAttribute("aria-expanded", open ? "true" : "false");
        });
        head.append(toggle);
      } else {
        text.classList.remove("clipped");
      }
    }
  });
  const tools = Array.isArray(item.tools) ? item.tools : [];
  $("tools").hidden = tools.length === 0;
  $("tools").open = false;
  const names = tools.map((t) => (t && t.function && t.function.name) || (t && t.name) || "?");
  showText($("tools-summary"), `Tools the assistant may call (${tools.length}): ${names.join(", ")}`);
  showText($("tools-text"), JSON.stringify(tools, null, 2));
}

function setSubmitLabel() {
  $("submit").textContent = confirming ? "Confirm: the shown order is my ranking (Enter)" : "Submit ranking (Enter)";
  $("submit").classList.toggle("confirming", confirming);
}

function setUndo() {
  $("undo-skip").hidden = lastSkip === null;
  if (lastSkip !== null) $("undo-skip").textContent = `Undo skip of item ${lastSkip.item} (u)`;
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
      $("item-info").textContent = `(item ${item.item}, round ${item.round})`;
      show("work");
      renderConversation();
      render();
      setSubmitLabel();
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
  if (!skip && !touched && !confirming) {
    // the order is still the random one the page showed: Enter pressed by habit must not save it
    confirming = true;
    setSubmitLabel();
    say("You have not moved or tied any response: the order is still the random one shown. If it is your " +
      "ranking, press Enter (or the button) again to submit it.", "warn");
    return;
  }
  busy = true;
  const shown = item;
  const state = currentState();
  const body = { annotator, item: shown.item, comment: $("comment").value };
  if (!skip) {
    Object.assign(body, { version: shown.version, ranking: groups(), none_acceptable: $("none-acceptable").checked });
  }
  say(skip ? "Skipping…" : "Saving…");
  const r = await api("POST", skip ? "api/skip" : "api/submit", body);
  busy = false;
  if (r.ok) {
    forget(shown);
    lastSkip = skip ? { item: shown.item, version: shown.version, state } : null;
    setUndo();
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

async function undoSkip() {
  if (lastSkip === null || busy) return;
  busy = true;
  const undone = lastSkip;
  say("Undoing the skip…");
  const r = await api("POST", "api/unskip", { annotator, item: undone.item });
  busy = false;
  lastSkip = null;
  setUndo();
  if (r.ok) {
    // the order and comment made before the skip come back with the item
    localStorage.setItem(savedKey(undone), JSON.stringify(undone.state));
    await loadNext(`Item ${undone.item} is back: rank it, or skip it again.`);
  } else {
    say(`Cannot undo the skip of item ${undone.item}: ${r.data.error}`, "error");
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
  if (e.ctrlKey || e.metaKey) return;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (key === "u" && !e.altKey && lastSkip !== null) {
    e.preventDefault();
    undoSkip();
    return;
  }
  if (!item || $("work").hidden) return;
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
  } else if (key === "e") {
    const li = [...$("candidates").children].find((node) => node.dataset.key === focusKey);
    if (li && li.querySelector("button.expand")) toggleExpanded(focusKey); // long responses only
  } else if (key === "n") {
    $("none-acceptable").checked = !$("none-acceptable").checked;
    save();
  } else if (key === "c") {
    $("comment").focus();
  } else if (key === "s") {
    send(true);
  } else if (key === "Enter" && !(target instanceof Element && target.closest("button, summary"))) {
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
$("undo-skip").addEventListener("click", () => undoSkip());
$("check-again").addEventListener("click", () => loadNext());
$("none-acceptable").addEventListener("change", save);
$("comment").addEventListener("input", save);
document.addEventListener("keydown", onKey);
wireDragAndDrop($("candidates"));
start();
