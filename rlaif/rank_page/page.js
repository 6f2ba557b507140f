// rlaif rank serve: one task at a time. Model text is untrusted: it reaches the page only through textContent,
// never innerHTML, and the server's Content-Security-Policy refuses any script but this file.
"use strict";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
let state = null;  // the server's answer: {annotator, answered, total, remaining, waiting, undo, task}
let shownAt = 0;   // when the task appeared (performance.now())
let answerId = ""; // one per task shown: a resent answer (a retry, a double click) is recorded once
let busy = false;  // a request is in flight: input waits for its answer
// The server answers in milliseconds, so without a pause the second click of a double click, or a held key's
// repeats, would answer the task shown next, which the person never saw. For this long after a task appears
// (or comes back on undo) input is ignored, and the page shows the new task arrived (.arrived, page.css).
const SETTLE_MS = 400;
let settledAt = 0;
let settleTimer = 0;

function newAnswerId() {  // a uuid4 as hex; crypto.randomUUID needs HTTPS, getRandomValues does not
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function call(path, body) {
  const response = await fetch(path, {
    method: body ? "POST" : "GET",
    headers: { "Content-Type": "application/json", "X-Token": params.get("token") || "" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : data.detail;
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return data;
}

async function act(path, body) {  // one request at a time; its answer is the new state
  if (busy) return;
  busy = true;
  try {
    show(await call(path, body));
  } catch (error) {
    $("message").textContent = `Not saved: ${error.message}`;
    $("message").className = "error";
  } finally {
    busy = false;
  }
}

// Bidirectional overrides and isolates make text show in another order than it reads ("Trojan Source"): shown as
// their escapes, so that a reply looks as it is, as the terminal shows it (rlaif.cli.terminal_safe).
function visible(text) {
  return String(text).replace(/[\u202a-\u202e\u2066-\u2069]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = visible(text);
  return node;
}

function settling() {
  return performance.now() < settledAt;
}

function arrived() {  // restart the flash: drop the class, let the browser see it gone, add it again
  const rank = $("rank");
  rank.classList.remove("arrived");
  void rank.offsetWidth;
  rank.classList.add("arrived");
  settledAt = performance.now() + SETTLE_MS;
  clearTimeout(settleTimer);
  settleTimer = setTimeout(() => rank.classList.remove("arrived"), SETTLE_MS);
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function show(next) {
  state = next;
  const name = state.annotator || "";
  if (document.activeElement !== $("annotator")) $("annotator").value = name;
  if (name && params.get("annotator") !== name) {  // a reload resumes as the same person
    params.set("annotator", name);
    history.replaceState(null, "", "?" + params);
  }
  $("progress").textContent = !name ? ""
    : `${state.answered} / ${state.total} answered, ${state.remaining} to go`
      + (state.waiting ? `, ${state.waiting} being ranked by others` : "");
  $("undo").disabled = !state.undo;
  $("message").className = "";
  $("message").textContent = !name ? "Type your name to start."
    : state.task ? ""
    : state.waiting ? `${plural(state.waiting, "task is", "tasks are")} being ranked by others right now; `
      + "reload in a few minutes."
    : `All done: no task is left for ${name}. Thank you!`;
  const task = state.task;
  $("rank").hidden = !task;
  if (!task) return;
  $("conversation").replaceChildren(...task.prompt.map((message) => {
    const turn = element("div", `turn ${message.role}`, "");
    turn.append(element("span", "role", message.role), element("div", "text", message.content));
    return turn;
  }));
  $("left").textContent = visible(task.replies[0]);
  $("right").textContent = visible(task.replies[1]);
  $("note").value = "";
  shownAt = performance.now();
  answerId = newAnswerId();
  arrived();
  // A button keeps the focus after a click, and a held Enter clicks it again and again: the new task starts unfocused.
  if (document.activeElement instanceof HTMLButtonElement) document.activeElement.blur();
  window.scrollTo(0, 0);
}

function answer(side) {
  if (!state || !state.task || settling()) return;
  act("/api/answer", {
    answer_id: answerId, task: state.task.id, annotator: state.annotator, side,
    note: $("note").value, seconds: (performance.now() - shownAt) / 1000,
  });
}

function undo() {
  if (state && state.undo && !settling()) act("/api/undo", { answer_id: state.undo, annotator: state.annotator });
}

function load(name) {
  act("/api/state?annotator=" + encodeURIComponent(name.trim()));
}

// 3 for a tie, as in the Label Studio config `rlaif rankings export` writes; t as well.
const KEYS = { "1": "left", ArrowLeft: "left", "2": "right", ArrowRight: "right", "3": "tie", t: "tie", s: "skip" };

document.addEventListener("keydown", (event) => {
  if (event.target.matches("input, textarea")) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (KEYS[event.key]) {
    event.preventDefault();
    if (!event.repeat) answer(KEYS[event.key]);  // a held key answers once
  } else if (event.key === "u" && !event.repeat) {
    undo();
  }
});
for (const button of document.querySelectorAll("button[data-side]")) {
  button.addEventListener("click", () => answer(button.dataset.side));
}
$("undo").addEventListener("click", undo);
$("annotator").addEventListener("change", (event) => load(event.target.value));
$("annotator").addEventListener("keydown", (event) => { if (event.key === "Enter") event.target.blur(); });

// The guidelines: TASKS_DIR/guidelines.md or the server's default, as plain text (it is user-editable). Open on a
// first visit; after that, as the person last left it.
const GUIDELINES_OPEN = "rlaif-rank-guidelines-open";
$("guidelines").open = localStorage.getItem(GUIDELINES_OPEN) !== "no";
$("guidelines").addEventListener("toggle", () => {
  localStorage.setItem(GUIDELINES_OPEN, $("guidelines").open ? "yes" : "no");
});
call("/api/guidelines").then((data) => { $("guidelines-text").textContent = data.text; }).catch((error) => {
  $("guidelines-text").textContent = `The guidelines did not load: ${error.message}`;
});

load(params.get("annotator") || "");
