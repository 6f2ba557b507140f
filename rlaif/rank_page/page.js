// rlaif rank serve: one task at a time. Model text is untrusted: it reaches the page only through textContent,
// never innerHTML, and the server's Content-Security-Policy refuses any script but this file.
"use strict";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
let state = null;  // the server's answer: {annotator, answered, total, remaining, undo, task}
let shownAt = 0;   // when the task appeared (performance.now())
let answerId = ""; // one per task shown: a resent answer (a retry, a double click) is recorded once
let busy = false;

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

function element(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

function show(next) {
  state = next;
  const name = state.annotator || "";
  if (document.activeElement !== $("annotator")) $("annotator").value = name;
  if (name && params.get("annotator") !== name) {  // a reload resumes as the same person
    params.set("annotator", name);
    history.replaceState(null, "", "?" + params);
  }
  $("progress").textContent = name ? `${state.answered} / ${state.total} answered, ${state.remaining} to go` : "";
  $("undo").disabled = !state.undo;
  $("message").className = "";
  $("message").textContent = !name ? "Type your name to start."
    : state.task ? "" : `All done: no task is left for ${name}. Thank you!`;
  const task = state.task;
  $("rank").hidden = !task;
  if (!task) return;
  $("conversation").replaceChildren(...task.prompt.map((message) => {
    const turn = element("div", `turn ${message.role}`, "");
    turn.append(element("span", "role", message.role), element("div", "text", message.content));
    return turn;
  }));
  $("left").textContent = task.replies[0];
  $("right").textContent = task.replies[1];
  $("note").value = "";
  shownAt = performance.now();
  answerId = newAnswerId();
  window.scrollTo(0, 0);
}

function answer(side) {
  if (!state || !state.task) return;
  act("/api/answer", {
    answer_id: answerId, task: state.task.id, annotator: state.annotator, side,
    note: $("note").value, seconds: (performance.now() - shownAt) / 1000,
  });
}

function undo() {
  if (state && state.undo) act("/api/undo", { answer_id: state.undo, annotator: state.annotator });
}

function load(name) {
  act("/api/state?annotator=" + encodeURIComponent(name.trim()));
}

const KEYS = { "1": "left", ArrowLeft: "left", "2": "right", ArrowRight: "right", t: "tie", s: "skip" };

document.addEventListener("keydown", (event) => {
  if (event.target.matches("input, textarea")) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (KEYS[event.key]) {
    event.preventDefault();
    answer(KEYS[event.key]);
  } else if (event.key === "u") {
    undo();
  }
});
for (const button of document.querySelectorAll("button[data-side]")) {
  button.addEventListener("click", () => answer(button.dataset.side));
}
$("undo").addEventListener("click", undo);
$("annotator").addEventListener("change", (event) => load(event.target.value));
$("annotator").addEventListener("keydown", (event) => { if (event.key === "Enter") event.target.blur(); });

load(params.get("annotator") || "");
