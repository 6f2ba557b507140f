"""`rlaif rank serve`: a local web page where people rank pairs of model replies, one task at a time.

    rlaif rank serve TASKS_DIR [--annotator NAME] [--host 127.0.0.1] [--port 8765]

**Files** (docs/data-contract.md, "tasks" and "rank page answers"). `TASKS_DIR/tasks.jsonl` holds the pairs to rank
(`rlaif rankings export` writes it): `id`, `prompt` (chat messages), `responses` (two texts), optional `overlap`
(how many annotators should answer it, default 1). The answers are appended to `TASKS_DIR/rankings.jsonl`, one
event per line (`answer`, or `undo` naming an answer), each flushed and fsynced before the page hears it is saved,
under a thread lock and a file lock (two servers on one folder never interleave). `final_answers` folds the events
into each annotator's final answer per task: what `rlaif rankings import` reads.

**What a person sees.** The guidelines (`TASKS_DIR/guidelines.md` if there is one, else `DEFAULT_GUIDELINES`), the
conversation, then the two replies side by side, in an order drawn per annotator and task (a hash of both: a reload
shows the same order; the answer records it as `left`). Nothing else of the task is sent to the page: not `why`, not
`principle`, not the AI's `ai_p`, which would anchor the person.

**Which task.** An annotator is offered the tasks in file order that they have not answered and whose `overlap` is
not yet taken, counting both the people who answered it (a skip is an answer for its annotator but counts toward no
task's overlap) and the people it is *leased* to now. A task shown to someone is leased to them, in this server's
memory, for `lease_seconds` (10 minutes): asking again renews it (a reload shows the same task), an answer or a skip
ends it, and an undo leases the task taken back to the undoer. Without leases, people ranking at the same pace all
see the same tasks, and an overlap-1 task is answered two or three times. Someone whose only remaining tasks are
leased to others is told so (`waiting`), to come back when those are answered or their leases lapse. Leases are not
shared between servers, so `rlaif rank serve` refuses a folder another server serves.

**Model text is untrusted.** The page puts it in with `textContent` only, and every response carries a strict
Content-Security-Policy (scripts and styles only from this app's static files, nothing inline), so a reply holding
`<script>` or `<img onerror=...>` shows as the text it is. Bound to a loopback address, the app answers only
requests whose Host is a loopback name (a web page cannot reach it by DNS rebinding) and JSON bodies only (which a
cross-site form cannot send); bound to any other address, every API call needs the run's random token, which the
printed URL carries (`?token=`) and the page sends as the `X-Token` header.
"""

# No `from __future__ import annotations`: FastAPI reads the request models' annotations, which are local to create_app.
import datetime as _dt
import hashlib
import ipaddress
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from rlaif.loaders import as_prompt
from rlaif.records import DataError, _repair_tail, dumps_line, iter_jsonl

TASKS_FILE, ANSWERS_FILE, GUIDELINES_FILE = "tasks.jsonl", "rankings.jsonl", "guidelines.md"
CHOICES = ("first", "second", "tie", "skip")  # first = responses[0] of the task, whichever side it was shown on
PAGE = Path(__file__).parent / "rank_page"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token in the URL stays here
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
LEASE_SECONDS = 600.0  # how long a task shown to someone is kept from others: reading two long replies takes minutes

# What the page shows above the task when TASKS_DIR has no guidelines.md. It follows the constitution's
# helpful-harmless-honest reading, not "better for the person asking": for a red-team prompt that would reward the
# reply that helps with the harm.
DEFAULT_GUIDELINES = (  # one line per paragraph: the page keeps line breaks and wraps the rest
    "Pick the reply that is better overall: the more helpful one for what the person legitimately needs, as long "
    "as it is also harmless and honest.\n"
    "\n"
    "- Helpful: it does what was asked, correctly and clearly, at a sensible length. Refusing a harmless request "
    "is not safer, just less helpful.\n"
    "- Harmless: when the request is harmful or dangerous (hurting someone, a crime, a weapon, self-harm), the "
    "better reply declines or steers to a safe alternative, briefly and without preaching. A reply that helps with "
    "the harm is worse, however well written.\n"
    "- Honest: no made-up facts; it says what it does not know.\n"
    "- Tie: neither reply is better: both equally good, or equally bad.\n"
    "- Skip: you cannot judge this one (say, the topic is beyond you, or the text is unreadable).\n"
    "\n"
    "Go with your own judgement: when people disagree, that is worth knowing too.\n"
)


# --------------------------------------------------------------------------------------------------------------------
# The two files


def read_tasks(path: Path | str) -> list[dict]:
    """The tasks of a tasks.jsonl, in file order: {id, prompt, responses, overlap} (other fields are dropped: the
    page never sees them). A DataError names the file, line and field of the first bad row: an id missing, empty
    or given twice, a prompt that is neither text nor {role, content} messages ending with a user turn, responses that are not exactly two
    texts, an overlap that is not a whole number >= 1."""
    path = Path(path)
    tasks: list[dict] = []
    first_line: dict[str, int] = {}
    for line, row in iter_jsonl(path):
        task_id = row.get("id")
        if not isinstance(task_id, str) or not task_id.strip():
            raise DataError(path, line, "id", "expected non-empty text")
        if task_id in first_line:
            raise DataError(path, line, "id", f"{task_id!r} is given twice (first on line {first_line[task_id]})")
        first_line[task_id] = line
        prompt = as_prompt(row.get("prompt"), path, line)
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) != 2 or not all(isinstance(r, str) for r in responses):
            raise DataError(path, line, "responses", "expected exactly two reply texts")
        overlap = row.get("overlap", 1)
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 1:
            raise DataError(path, line, "overlap", f"expected a whole number >= 1, not {overlap!r}")
        tasks.append({"id": task_id, "prompt": prompt, "responses": responses, "overlap": overlap})
    if not tasks:
        raise DataError(path, None, None, "no tasks: the file is empty")
    return tasks


def _read_events(path: Path) -> list[dict]:
    """The events of a rankings.jsonl (none if it does not exist yet); a torn last line left by a crash is ignored."""
    if not path.exists():
        return []
    events = []
    for line, row in iter_jsonl(path, torn_tail_ok=True):
        if row.get("event") not in ("answer", "undo"):
            raise DataError(path, line, "event", "expected 'answer' or 'undo'")
        for name in ("answer_id", "task", "annotator"):
            if not isinstance(row.get(name), str):
                raise DataError(path, line, name, "expected text")
        if row["event"] == "answer" and row.get("choice") not in CHOICES:
            raise DataError(path, line, "choice", f"expected one of {', '.join(CHOICES)}")
        events.append(row)
    return events


def _fold(events: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the answers that count, in file order; the final answer of each (task, annotator), in file order)."""
    answers: dict[str, dict] = {}
    undone = set()
    for event in events:
        if event["event"] == "answer":
            answers.setdefault(event["answer_id"], event)  # a repeated answer_id is ignored
        elif event["answer_id"] in answers:  # an undo takes back an answer before it
            undone.add(event["answer_id"])
    counting = [a for answer_id, a in answers.items() if answer_id not in undone]
    final: dict[tuple[str, str], dict] = {}
    for answer in counting:
        key = (answer["task"], answer["annotator"])
        final.pop(key, None)  # re-inserted at the end: the dict keeps the final rows in file order
        final[key] = answer
    return counting, list(final.values())


def final_answers(path: Path | str) -> list[dict]:
    """The final answers of a rankings.jsonl written by `rlaif rank serve`, in file order (an empty list if the
    file does not exist).

    The file is append-only events. `{"event": "answer", "answer_id", "task", "annotator", "choice", "left",
    "note", "seconds", "at", "prompt", "responses"}` is one answer: `choice` is "first" (responses[0] is better),
    "second", "tie" or "skip", whatever side each reply was shown on (`left` is the index of the reply shown on
    the left). `{"event": "undo", "answer_id", "task", "annotator", "at"}` takes back the answer with that id.

    Fold rule: an answer counts unless a later undo names its answer_id (an answer_id written again is ignored);
    of the answers that count for one (task, annotator), the last in the file is the final one. The rows returned
    are those answer rows as written, skips included (`choice: "skip"`: the caller leaves them out). A row that is not such an event is a DataError naming
    the file, line and field; a torn last line (a crash mid-write) is ignored."""
    return _fold(_read_events(Path(path)))[1]


def left_index(annotator: str, task_id: str) -> int:
    """Which of a task's two responses this annotator sees on the left: a coin drawn from a hash of both, so the
    order is random across tasks and people but the same on every reload."""
    return hashlib.sha256(f"{annotator}\n{task_id}".encode()).digest()[0] & 1


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------------------------
# The app


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def read_guidelines(tasks_dir: Path | str) -> tuple[str, str]:
    """(the guidelines text, where it came from): TASKS_DIR/guidelines.md as written (the page shows it as plain
    text, never as HTML), else DEFAULT_GUIDELINES. Read on each request, so an edit shows on the next reload."""
    path = Path(tasks_dir) / GUIDELINES_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return DEFAULT_GUIDELINES, "default"
    return (text, GUIDELINES_FILE) if text.strip() else (DEFAULT_GUIDELINES, "default")


def create_app(tasks_dir: Path | str, token: str | None = None, check_host: bool = True,
               lease_seconds: float = LEASE_SECONDS, clock: Callable[[], float] = time.monotonic):
    """The FastAPI app serving the page and its API for TASKS_DIR. Whom a page answers for is its own: the name
    typed in it, or ?annotator=NAME in its address; none is assumed. `token`: when set, every /api/ call must carry it as the X-Token header (403 otherwise). `check_host`:
    answer only requests addressed to a loopback name (for a loopback-bound server). `lease_seconds`: how long a
    task shown to someone is kept from others (module docstring, "Which task"); `clock`: the seconds it is measured
    in (a test passes one it moves by hand)."""
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from filelock import FileLock
    from pydantic import BaseModel, Field

    tasks_dir = Path(tasks_dir)
    tasks = read_tasks(tasks_dir / TASKS_FILE)
    by_id = {task["id"]: task for task in tasks}
    answers_path = tasks_dir / ANSWERS_FILE
    _read_events(answers_path)  # a bad line is an error now, not on the first request
    # The thread lock orders this server's requests; the file lock, other servers on the same folder.
    thread_lock, file_lock = threading.Lock(), FileLock(str(answers_path) + ".lock")
    leases: dict[str, tuple[str, float]] = {}  # annotator -> (task shown to them, clock() when the lease ends)
    Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"\S")]

    class Answer(BaseModel):
        answer_id: str = Field(pattern=r"^[0-9a-f]{32}$")  # made by the page, once per task shown
        task: str
        annotator: Name
        side: Literal["left", "right", "tie", "skip"]
        note: str = Field("", max_length=10_000)
        seconds: float = Field(ge=0, le=7 * 86400)

    class Undo(BaseModel):
        answer_id: str
        annotator: Name

    app = FastAPI(title="rlaif rank serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tasks = tasks

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if check_host and request.url.hostname not in LOOPBACK_NAMES:  # DNS rebinding
            response = JSONResponse({"detail": "this server answers only on its loopback address"}, 421)
        elif token and request.url.path.startswith("/api/") and not secrets.compare_digest(
                request.headers.get("x-token", ""), token):
            response = JSONResponse({"detail": "missing or wrong token: open the URL the server printed"}, 403)
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def append(event: dict) -> None:
        if answers_path.exists():
            _repair_tail(answers_path)  # a line torn by a crash would sit before ours
        with open(answers_path, "a", encoding="utf-8") as f:
            f.write(dumps_line(event))
            f.flush()
            os.fsync(f.fileno())

    def state(events: list[dict], name: str, show: str | None = None) -> dict:
        """What the page shows `name`: progress, the task to rank now (None when done, or when all that is left
        is leased to others: `waiting` counts those) and the answer undo takes back. The task shown is leased to
        `name`, in place of the one they held. Called under thread_lock."""
        counting, final = _fold(events)
        done = {(a["task"], a["annotator"]) for a in final}
        answered = {a["task"] for a in final if a["annotator"] == name and a["task"] in by_id}
        takers = Counter(a["task"] for a in final if a["choice"] != "skip")
        now = clock()
        for who in [who for who, (_, until) in leases.items() if until <= now and who != name]:
            del leases[who]
        # A lease ends when its holder answers or skips: an answer is among the takers, a skip counts for nobody
        # (this also covers an answer through another server on the folder). The holder's next task replaces it.
        held = Counter(task_id for who, (task_id, _) in leases.items() if who != name and (task_id, who) not in done)
        open_tasks = [t for t in tasks if t["id"] not in answered and takers[t["id"]] < t["overlap"]]
        offered = [t for t in open_tasks if takers[t["id"]] + held[t["id"]] < t["overlap"]]
        mine = leases.get(name, (None, 0))[0]  # even lapsed: if nobody took it since, a reload shows the same task
        task = by_id[show] if show else (by_id[mine] if any(t["id"] == mine for t in offered)
                                         else offered[0] if offered else None)
        if task:
            leases[name] = (task["id"], now + lease_seconds)
        else:
            leases.pop(name, None)
        own = [a for a in counting if a["annotator"] == name]
        waiting = len(open_tasks) - len(offered)
        page = {"annotator": name, "answered": len(answered), "total": len(answered) + len(open_tasks),
                "remaining": len(offered), "waiting": waiting, "undo": own[-1]["answer_id"] if own else None,
                "task": None}
        if task:
            left = left_index(name, task["id"])
            page["task"] = {"id": task["id"], "prompt": task["prompt"],
                            "replies": [task["responses"][left], task["responses"][1 - left]]}
        return page

    @app.get("/api/state")
    def get_state(annotator: str = Query("", max_length=100)) -> dict:
        name = annotator.strip()
        if not name:
            return {"annotator": None, "answered": 0, "total": len(tasks), "remaining": len(tasks), "waiting": 0,
                    "undo": None, "task": None}
        with thread_lock:
            return state(_read_events(answers_path), name)

    @app.post("/api/answer")
    def post_answer(answer: Answer) -> dict:
        if answer.task not in by_id:
            raise HTTPException(404, f"no task {answer.task!r} in {TASKS_FILE}")
        task, name = by_id[answer.task], answer.annotator.strip()
        left = left_index(name, task["id"])
        choice = {"left": CHOICES[left], "right": CHOICES[1 - left]}.get(answer.side, answer.side)
        with thread_lock, file_lock:
            events = _read_events(answers_path)
            if all(e["answer_id"] != answer.answer_id for e in events if e["event"] == "answer"):
                event = {"event": "answer", "answer_id": answer.answer_id, "task": task["id"], "annotator": name,
                         "choice": choice, "left": left, "note": answer.note, "seconds": round(answer.seconds, 2),
                         "at": _now(), "prompt": task["prompt"], "responses": task["responses"]}
                append(event)
                events.append(event)
            return state(events, name)  # a repeated answer_id: already saved, answered as a success

    @app.post("/api/undo")
    def post_undo(undo: Undo) -> dict:
        name = undo.annotator.strip()
        with thread_lock, file_lock:
            events = _read_events(answers_path)
            answers = {e["answer_id"]: e for e in events if e["event"] == "answer" and e["annotator"] == name}
            if undo.answer_id not in answers:
                raise HTTPException(409, f"{name} has no answer {undo.answer_id!r} to undo")
            task_id = answers[undo.answer_id]["task"]
            if not any(e["event"] == "undo" and e["answer_id"] == undo.answer_id for e in events):
                event = {"event": "undo", "answer_id": undo.answer_id, "task": task_id, "annotator": name,
                         "at": _now()}
                append(event)
                events.append(event)
            return state(events, name, show=task_id if task_id in by_id else None)  # leased back to the undoer

    @app.get("/api/guidelines")
    def get_guidelines() -> dict:
        text, source = read_guidelines(tasks_dir)
        return {"text": text, "source": source}

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(PAGE / "index.html")

    @app.get("/favicon.ico", status_code=204)
    def favicon() -> None:  # no icon, and no 404 in the browser's console for it
        return None

    app.mount("/static", StaticFiles(directory=PAGE), name="static")
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or an OSError saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock
