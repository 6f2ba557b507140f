"""`rlaif rank serve`: the tasks file's checks, the fold of the answers file, the API (double submit, token, host,
leases, guidelines), the CLI, and the page itself in a real browser (Debian's Chromium driven by Playwright; skipped where it is missing
unless RLAIF_TESTS_REQUIRE names chromium, as CI does)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.rank_serve import DEFAULT_GUIDELINES, bind, create_app, final_answers, left_index, read_tasks
from rlaif.records import DataError

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = ("<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2; document.title = 'pwned'\">"
           "<b onmouseover=\"window.__pwned = 3\">bold</b> <a href=\"javascript:window.__pwned=4\">link</a> "
           "<style>body { display: none }</style>&amp; done")


def task(n: int, **extra) -> dict:
    return {"id": f"t{n}", "prompt": [{"role": "user", "content": f"question t{n}"}],
            "responses": [f"reply {n} first", f"reply {n} second"], "ai_p": 0.5, "why": "uncertain", **extra}


def write_tasks(directory: Path, rows: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tasks.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def events(directory: Path) -> list[dict]:
    path = directory / "rankings.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --------------------------------------------------------------------------------------------------------------------
# The files


def test_final_answers_fold_undo_reanswer_and_skip(tmp_path):
    def answer(answer_id, task_id, who, choice):
        return {"event": "answer", "answer_id": answer_id, "task": task_id, "annotator": who, "choice": choice,
                "left": 0, "note": "", "seconds": 1.0, "at": "2026-11-30T13:45:00Z"}

    rows = [answer("a1", "t1", "ana", "first"),
            answer("a2", "t2", "ana", "second"),
            {"event": "undo", "answer_id": "a2", "task": "t2", "annotator": "ana", "at": "2026-11-30T13:46:00Z"},
            answer("a3", "t1", "bob", "skip"),
            answer("a4", "t1", "ana", "tie"),  # ana answers t1 again: this one is final
            answer("a5", "t3", "ana", "first"),
            answer("a6", "t3", "ana", "second"),
            {"event": "undo", "answer_id": "a6", "task": "t3", "annotator": "ana", "at": "2026-11-30T13:47:00Z"},
            {"event": "undo", "answer_id": "a7", "task": "t4", "annotator": "ana", "at": "2026-11-30T13:48:00Z"},
            answer("a7", "t4", "ana", "first"),  # the undo before it does not take it back
            answer("a7", "t4", "ana", "second")]  # the same answer_id again: ignored
    path = tmp_path / "rankings.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"event": "answ')  # torn by a crash
    final = final_answers(path)
    assert [(a["answer_id"], a["task"], a["annotator"], a["choice"]) for a in final] == [
        ("a3", "t1", "bob", "skip"), ("a4", "t1", "ana", "tie"), ("a5", "t3", "ana", "first"),
        ("a7", "t4", "ana", "first")]
    assert final_answers(tmp_path / "none.jsonl") == []


def test_final_answers_names_a_bad_row(tmp_path):
    path = tmp_path / "rankings.jsonl"
    path.write_text('{"event": "undo", "answer_id": "a1", "task": "t1", "annotator": "ana"}\n'
                    '{"event": "answer", "answer_id": "a2", "task": "t1", "annotator": "ana", "choice": "left"}\n')
    with pytest.raises(DataError, match=r"rankings.jsonl:2: choice: expected one of first, second, tie, skip"):
        final_answers(path)


@pytest.mark.parametrize("bad, field, message", [
    ({"id": ""}, "id", "expected non-empty text"),
    ({"id": 7}, "id", "expected non-empty text"),
    ({"id": "t1"}, "id", "'t1' is given twice (first on line 1)"),
    ({"prompt": 5}, "prompt", "expected text or a list of {role, content} messages"),
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, r"prompt\[1\].role",
     "a prompt ends with the user turn to answer, not 'assistant'"),
    ({"prompt": [{"role": "robot", "content": "hi"}]}, r"prompt\[0\].role", "expected 'system', 'user' or"),
    ({"prompt": [{"role": "user", "content": None}]}, r"prompt\[0\].content", "expected text"),
    ({"responses": ["only one"]}, "responses", "expected exactly two reply texts"),
    ({"responses": ["a", "b", "c"]}, "responses", "expected exactly two reply texts"),
    ({"responses": ["a", {"content": "b"}]}, "responses", "expected exactly two reply texts"),
    ({"overlap": 0}, "overlap", "expected a whole number >= 1, not 0"),
    ({"overlap": 1.5}, "overlap", "expected a whole number >= 1, not 1.5"),
    ({"overlap": True}, "overlap", "expected a whole number >= 1, not True"),
])
def test_tasks_file_errors_name_file_line_and_field(tmp_path, bad, field, message):
    write_tasks(tmp_path, [task(1), {**task(2), **bad}])
    with pytest.raises(DataError, match=rf"tasks.jsonl:2: {field}: {re.escape(message) if '(' in message else message}"):
        read_tasks(tmp_path / "tasks.jsonl")


def test_tasks_keep_only_what_the_page_may_show(tmp_path):
    write_tasks(tmp_path, [task(1), task(2, overlap=3)])
    assert read_tasks(tmp_path / "tasks.jsonl") == [
        {"id": "t1", "prompt": task(1)["prompt"], "responses": task(1)["responses"], "overlap": 1},
        {"id": "t2", "prompt": task(2)["prompt"], "responses": task(2)["responses"], "overlap": 3}]


def test_left_index_is_a_stable_coin_per_annotator_and_task():
    sides = [left_index("ana", f"t{n}") for n in range(40)]
    assert set(sides) == {0, 1} and 10 < sum(sides) < 30
    assert sides == [left_index("ana", f"t{n}") for n in range(40)]
    assert sides != [left_index("bob", f"t{n}") for n in range(40)]


# --------------------------------------------------------------------------------------------------------------------
# The API and the command


@contextlib.contextmanager
def serving(tasks_dir: Path, **kwargs):
    """The app on a free loopback port, in a thread of this process: its base URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(tasks_dir, **kwargs), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextlib.contextmanager
def api(tasks_dir: Path, **kwargs):
    """call(method, path, **requests_kwargs) on the app, served on a free loopback port."""
    import requests

    with serving(tasks_dir, **kwargs) as base:
        yield lambda method, path, **kw: requests.request(method, base + path, timeout=10, **kw)


def test_double_submit_is_recorded_once(tmp_path):
    with api(write_tasks(tmp_path, [task(1), task(2)])) as http:
        body = {"answer_id": "ab" * 16, "task": "t1", "annotator": "ana", "side": "right", "note": "n",
                "seconds": 2.5}
        first, second = http("post", "/api/answer", json=body), http("post", "/api/answer", json=body)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        assert first.json()["answered"] == 1 and first.json()["task"]["id"] == "t2"
        [row] = events(tmp_path)
        left = left_index("ana", "t1")
        assert row == {**row, "event": "answer", "task": "t1", "annotator": "ana", "left": left, "note": "n",
                       "choice": "second" if left == 0 else "first", "seconds": 2.5,
                       "prompt": task(1)["prompt"], "responses": task(1)["responses"]}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["at"])
        undo = {"answer_id": "ab" * 16, "annotator": "ana"}
        assert http("post", "/api/undo", json=undo).json()["task"]["id"] == "t1"
        assert http("post", "/api/undo", json=undo).status_code == 200
        assert [e["event"] for e in events(tmp_path)] == ["answer", "undo"]
        assert http("post", "/api/undo", json={**undo, "annotator": "bob"}).status_code == 409  # not bob's answer


class Clock:
    """A clock for create_app that the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer_body(task_id: str, who: str, side: str, n: int) -> dict:
    return {"answer_id": f"{n:032x}", "task": task_id, "annotator": who, "side": side, "seconds": 3}


def test_leases_spread_people_over_the_tasks_until_they_lapse(tmp_path):
    clock = Clock()
    with api(write_tasks(tmp_path, [task(1), task(2), task(3, overlap=2)]), lease_seconds=600, clock=clock) as http:
        def look(who: str) -> dict:
            return http("get", f"/api/state?annotator={who}").json()

        def shown(who: str) -> str | None:
            return (look(who)["task"] or {}).get("id")

        assert [shown(who) for who in ("ana", "bob", "ana", "cy", "dan")] == ["t1", "t2", "t1", "t3", "t3"]
        eve = look("eve")  # every task is leased to as many people as it wants
        assert (eve["task"], eve["answered"], eve["total"], eve["remaining"], eve["waiting"]) == (None, 0, 3, 0, 3)

        after_skip = http("post", "/api/answer", json=answer_body("t2", "bob", "skip", 1)).json()
        assert (after_skip["task"], after_skip["answered"], after_skip["waiting"]) == (None, 1, 2)
        assert shown("eve") == "t2"  # bob's skip gave it back

        after_answer = http("post", "/api/answer", json=answer_body("t3", "dan", "left", 2)).json()
        assert (after_answer["task"], after_answer["answered"], after_answer["waiting"]) == (None, 1, 2)
        assert look("fay")["waiting"] == 3  # t3: dan's answer and cy's lease take its overlap of 2
        http("post", "/api/answer", json=answer_body("t3", "cy", "skip", 3))
        assert shown("fay") == "t3"

        clock.now += 599
        assert shown("ana") == "t1"  # asking again renews the lease for another 600 s
        clock.now += 2  # every other lease has lapsed
        assert shown("gus") == "t2"  # eve's, lapsed; t1's is ana's still
        assert shown("eve") == "t3"  # her lapsed t2 went to gus; fay's lease on t3 lapsed too
        fay = look("fay")  # t1 is ana's, t2 gus's, t3 has dan's answer and eve's lease
        assert (fay["task"], fay["remaining"], fay["waiting"]) == (None, 0, 3)
        assert shown("ana") == "t1"
    assert [(e["task"], e["annotator"], e["choice"]) for e in events(tmp_path)] == [
        ("t2", "bob", "skip"), ("t3", "dan", ("first", "second")[left_index("dan", "t3")]), ("t3", "cy", "skip")]


def test_a_lapsed_lease_nobody_took_shows_the_same_task_and_undo_leases_it_back(tmp_path):
    clock = Clock()
    with api(write_tasks(tmp_path, [task(1), task(2), task(3)]), lease_seconds=60, clock=clock) as http:
        def shown(who: str) -> str | None:
            return (http("get", f"/api/state?annotator={who}").json()["task"] or {}).get("id")

        assert [shown("ana"), shown("bob")] == ["t1", "t2"]
        clock.now += 120  # both lapsed; ana is back first and sees her t1, not bob's t2
        assert [shown("ana"), shown("bob")] == ["t1", "t2"]
        answered = http("post", "/api/answer", json=answer_body("t1", "ana", "left", 1)).json()
        assert answered["task"]["id"] == "t3"
        undone = http("post", "/api/undo", json={"answer_id": f"{1:032x}", "annotator": "ana"}).json()
        assert undone["task"]["id"] == "t1" and undone["answered"] == 0
        assert shown("cy") == "t3"  # t1 is ana's again, and she no longer holds t3


def test_guidelines_come_from_the_tasks_folder_else_the_default(tmp_path):
    write_tasks(tmp_path, [task(1)])
    with api(tmp_path) as http:
        assert http("get", "/api/guidelines").json() == {"text": DEFAULT_GUIDELINES, "source": "default"}
        (tmp_path / "guidelines.md").write_text("Prefer the kinder reply.\n<b>not bold</b>\n")
        assert http("get", "/api/guidelines").json() == {"text": "Prefer the kinder reply.\n<b>not bold</b>\n",
                                                         "source": "guidelines.md"}
        (tmp_path / "guidelines.md").write_text("  \n")
        assert http("get", "/api/guidelines").json()["source"] == "default"
    for line in ("harmless and honest", "declines or steers to a safe alternative", "without preaching",
                 "Tie: neither reply is better", "Skip: you cannot judge"):
        assert line in " ".join(DEFAULT_GUIDELINES.split())


def test_api_refuses_other_hosts_forms_and_bad_answers(tmp_path):
    with api(write_tasks(tmp_path, [task(1)])) as http:
        assert http("get", "/api/state?annotator=ana").status_code == 200
        assert http("get", "/api/state?annotator=ana", headers={"Host": "evil.example:8765"}).status_code == 421
        body = {"answer_id": "cd" * 16, "task": "t1", "annotator": "ana", "side": "left", "seconds": 1}
        assert http("post", "/api/answer", data=json.dumps(body), headers={"Content-Type": "text/plain"}).status_code \
            == 422  # what a cross-site form could send
        assert http("post", "/api/answer", json={**body, "task": "t9"}).status_code == 404
        assert http("post", "/api/answer", json={**body, "side": "first"}).status_code == 422
        assert http("post", "/api/answer", json={**body, "annotator": "  "}).status_code == 422
        assert http("post", "/api/answer", json={**body, "answer_id": "x"}).status_code == 422
    assert events(tmp_path) == []


def test_answers_wait_for_the_file_lock_another_server_holds(tmp_path):
    from filelock import FileLock

    body = {"answer_id": "ef" * 16, "task": "t1", "annotator": "ana", "side": "tie", "seconds": 1}
    with api(write_tasks(tmp_path, [task(1)])) as http:
        answered = []
        with FileLock(str(tmp_path / "rankings.jsonl.lock")):  # as a second server on the folder would
            writer = threading.Thread(target=lambda: answered.append(http("post", "/api/answer", json=body)))
            writer.start()
            time.sleep(0.5)
            assert answered == [] and events(tmp_path) == []
        writer.join(10)
    assert answered[0].status_code == 200 and [e["choice"] for e in events(tmp_path)] == ["tie"]


def test_serve_off_loopback_requires_the_token_and_stops_on_ctrl_c(tmp_path):
    write_tasks(tmp_path, [task(1)])
    command = [sys.executable, "-m", "rlaif", "rank", "serve", str(tmp_path), "--host", "0.0.0.0", "--port", "0",
               "--no-open"]
    server = subprocess.Popen([*command, "--annotator", "ana lee"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        lines = [server.stdout.readline() for _ in range(3)]
        match = re.search(r"Open (http://\S+:(\d+)/\?token=(\S+)) \(yours: (\S+)\)", "".join(lines))
        assert match, lines
        assert match[4] == f"{match[1]}&annotator=ana+lee"  # the name in the address, not assumed for everyone
        assert "Ctrl-C" in lines[2]
        import requests

        base, token = f"http://127.0.0.1:{match[2]}", match[3]
        anyone = requests.get(f"{base}/api/state", headers={"X-Token": token}, timeout=10)
        assert anyone.status_code == 200 and anyone.json()["annotator"] is None
        assert requests.get(f"{base}/api/state?annotator=ana", timeout=10).status_code == 403
        assert requests.get(f"{base}/api/state?annotator=ana", headers={"X-Token": "x" + token},
                            timeout=10).status_code == 403
        good = requests.get(f"{base}/api/state?annotator=ana", headers={"X-Token": token}, timeout=10)
        assert good.status_code == 200 and good.json()["task"]["id"] == "t1"
        # a second server on the folder would hand out the same tasks (leases live in the first one's memory)
        second = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 1 and "another `rlaif rank serve` is serving this folder" in second.stderr + \
            second.stdout
        server.send_signal(signal.SIGINT)
        rest = server.communicate(timeout=20)[0]
    finally:
        server.kill()
    assert server.returncode == 0, rest
    assert "Stopped" in rest and "Traceback" not in rest


def test_serve_bad_tasks_file_is_a_clear_error(tmp_path):
    from rlaif.cli import cli

    write_tasks(tmp_path, [task(1), task(1)])
    result = CliRunner().invoke(cli, ["rank", "serve", str(tmp_path), "--no-open"])
    assert result.exit_code == 1
    assert "tasks.jsonl:2: id: 't1' is given twice (first on line 1)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    result = CliRunner().invoke(cli, ["rank", "serve", str(tmp_path / "nowhere"), "--no-open"])
    assert result.exit_code == 1 and "tasks.jsonl: file not found" in result.output


# --------------------------------------------------------------------------------------------------------------------
# The page, in Chromium


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file() or not _has_playwright():
        if "chromium" in os.environ.get("RLAIF_TESTS_REQUIRE", ""):
            pytest.fail(f"{CHROMIUM} or playwright is missing, and RLAIF_TESTS_REQUIRE asks for chromium "
                        "(apt-get install chromium; pip install -e '.[test]')")
        pytest.skip(f"{CHROMIUM} or playwright is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield chromium
        chromium.close()


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    yield context.new_page()
    context.close()


def showing(page, n: int) -> None:
    """Wait until the page shows task n and takes input (page.js ignores it for SETTLE_MS after a task appears)."""
    from playwright.sync_api import expect

    expect(page.locator("#conversation")).to_have_text(f"userquestion t{n}")
    expect(page.locator("#rank")).not_to_have_class(re.compile(r"\barrived\b"))


def test_rank_with_keys_buttons_tie_and_skip(tmp_path, page):
    from playwright.sync_api import expect

    with serving(write_tasks(tmp_path, [task(n) for n in range(1, 6)])) as url:
        page.goto(f"{url}/?annotator=ana")
        showing(page, 1)
        left = left_index("ana", "t1")
        assert page.locator("#left").text_content() == task(1)["responses"][left]
        assert page.locator("#right").text_content() == task(1)["responses"][1 - left]
        expect(page.locator("#progress")).to_have_text("0 / 5 answered, 5 to go")
        assert "annotator=ana" in page.url
        page.keyboard.press("1")
        showing(page, 2)
        page.locator("#note").fill("both are fine, B is kinder")
        page.get_by_role("button", name="B is better").click()
        showing(page, 3)
        page.keyboard.press("3")  # the tie key Label Studio uses; t as well (below)
        showing(page, 4)
        page.get_by_role("button", name="Skip").click()
        showing(page, 5)
        expect(page.locator("#progress")).to_have_text("4 / 5 answered, 1 to go")
        page.keyboard.press("ArrowRight")
        expect(page.locator("#message")).to_have_text("All done: no task is left for ana. Thank you!")
        expect(page.locator("#rank")).to_be_hidden()
    def side(task_id, shown_side):  # the reply shown on that side, as the file names it
        return ("first", "second")[left_index("ana", task_id) ^ (shown_side == "right")]

    assert [(e["task"], e["choice"], e["note"]) for e in final_answers(tmp_path / "rankings.jsonl")] == [
        ("t1", side("t1", "left"), ""), ("t2", side("t2", "right"), "both are fine, B is kinder"),
        ("t3", "tie", ""), ("t4", "skip", ""), ("t5", side("t5", "right"), "")]
    assert all(e["annotator"] == "ana" and 0 < e["seconds"] < 60 for e in events(tmp_path))
    assert [e["left"] for e in events(tmp_path)] == [left_index("ana", f"t{n}") for n in range(1, 6)]


def test_undo_then_reload_and_reopen_resume(tmp_path, page, browser):
    from playwright.sync_api import expect

    with serving(write_tasks(tmp_path, [task(n) for n in range(1, 5)])) as url:
        page.goto(f"{url}/?annotator=ana")
        showing(page, 1)
        page.keyboard.press("1")
        showing(page, 2)
        page.keyboard.press("2")
        showing(page, 3)
        page.keyboard.press("u")  # takes back t2's answer, and shows t2 again
        showing(page, 2)
        expect(page.locator("#progress")).to_have_text("1 / 4 answered, 3 to go")
        undone = events(tmp_path)[-1]
        assert undone["event"] == "undo" and undone["task"] == "t2" and undone["answer_id"] == events(tmp_path)[1][
            "answer_id"]
        assert [a["task"] for a in final_answers(tmp_path / "rankings.jsonl")] == ["t1"]
        page.reload()
        showing(page, 2)
        page.get_by_role("button", name="Tie").click()
        showing(page, 3)
        page.reload()
        showing(page, 3)
        expect(page.locator("#progress")).to_have_text("2 / 4 answered, 2 to go")
        later = browser.new_page()  # the page closed and opened again
        later.goto(f"{url}/?annotator=ana")
        showing(later, 3)
        later.close()
    assert [(a["task"], a["choice"]) for a in final_answers(tmp_path / "rankings.jsonl")] == [
        ("t1", ("first", "second")[left_index("ana", "t1")]), ("t2", "tie")]


def test_two_annotators_get_the_tasks_overlap_leaves_them(tmp_path, page):
    from playwright.sync_api import expect

    tasks = [task(1, overlap=2), task(2), task(3)]
    with serving(write_tasks(tmp_path, tasks)) as url:
        page.goto(url)
        expect(page.locator("#message")).to_have_text("Type your name to start.")
        page.locator("#annotator").fill("ana")
        page.keyboard.press("Enter")
        showing(page, 1)
        page.keyboard.press("1")
        showing(page, 2)
        page.keyboard.press("1")
        showing(page, 3)
        page.keyboard.press("s")  # a skip: t3 still needs its one annotator
        expect(page.locator("#message")).to_have_text("All done: no task is left for ana. Thank you!")

        page.locator("#annotator").fill("bob")
        page.keyboard.press("Enter")
        showing(page, 1)  # t1 wants two people; t2 has its one
        expect(page.locator("#progress")).to_have_text("0 / 2 answered, 2 to go")
        assert "annotator=bob" in page.url
        page.keyboard.press("2")
        showing(page, 3)
        page.keyboard.press("t")
        expect(page.locator("#message")).to_have_text("All done: no task is left for bob. Thank you!")

        page.goto(f"{url}/?annotator=cy")
        expect(page.locator("#message")).to_have_text("All done: no task is left for cy. Thank you!")
        expect(page.locator("#progress")).to_have_text("0 / 0 answered, 0 to go")
    final = final_answers(tmp_path / "rankings.jsonl")
    assert [(a["task"], a["annotator"]) for a in final] == [("t1", "ana"), ("t2", "ana"), ("t3", "ana"),
                                                            ("t1", "bob"), ("t3", "bob")]


def test_hostile_text_shows_literally_and_runs_nothing(tmp_path, page):
    from playwright.sync_api import expect

    # the second reply and the user turn hold a right-to-left override, which would show the text after it
    # reversed ("Trojan Source"): shown as its escape, as the terminal shows it
    hostile = {"id": "h1", "prompt": [{"role": "system", "content": "<i>system</i>"},
                                      {"role": "user", "content": HOSTILE + "\u202eabc"}],
               "responses": [HOSTILE, "<u>plain</u> \u202eelpmaxe"]}
    shown = [HOSTILE, "<u>plain</u> \\u202eelpmaxe"]
    with serving(write_tasks(tmp_path, [hostile])) as url:
        response = page.goto(f"{url}/?annotator=%3Cb%3Eana%3C%2Fb%3E")
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy
        left = left_index("<b>ana</b>", "h1")
        expect(page.locator("#left")).to_have_text(shown[left])
        assert page.locator("#right").text_content() == shown[1 - left]
        assert page.locator("#conversation .text").all_text_contents() == ["<i>system</i>", HOSTILE + "\\u202eabc"]
        assert page.request.get(f"{url}/favicon.ico").status == 204  # no icon, and no 404 for it
        assert page.locator("#annotator").input_value() == "<b>ana</b>"
        page.locator("#left").hover()
        page.locator("#right").hover()
        assert page.locator("#conversation *, #left *, #right *").evaluate_all(
            "nodes => nodes.map(n => n.className)") == ["turn system", "role", "text", "turn user", "role", "text"]
        assert page.locator("img, script:not([src]), style, a, b, i, u").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert page.title() == "rlaif: which reply is better?"
        expect(page.locator("body")).to_be_visible()
        # The policy itself: markup that did get in could not run its handler
        page.evaluate("document.body.insertAdjacentHTML('beforeend', '<img src=x onerror=\"window.__pwned = 5\">')")
        page.wait_for_timeout(300)
        assert page.evaluate("window.__pwned") is None


def test_double_click_and_held_key_answer_only_the_task_seen(tmp_path, page):
    from playwright.sync_api import expect

    with serving(write_tasks(tmp_path, [task(n) for n in range(1, 6)])) as url:
        page.goto(f"{url}/?annotator=ana")
        showing(page, 1)
        box = page.get_by_role("button", name="A is better").bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.click(x, y)  # an ordinary double click: two clicks 150 ms apart
        page.wait_for_timeout(150)
        page.mouse.click(x, y)
        showing(page, 2)
        expect(page.locator("#progress")).to_have_text("1 / 5 answered, 4 to go")
        assert [e["task"] for e in events(tmp_path)] == ["t1"]

        # Input the moment a task appears (no request in flight any more) is ignored, a click or a key
        page.evaluate("""() => new Promise((resolve) => {
            const button = document.querySelector("button[data-side=right]");
            new MutationObserver((_, observer) => {
                observer.disconnect();
                button.click();
                document.body.dispatchEvent(new KeyboardEvent("keydown", {key: "1", bubbles: true}));
                resolve();
            }).observe(document.getElementById("conversation"), {childList: true});
            button.click();
        })""")
        showing(page, 3)
        page.wait_for_timeout(300)
        assert [e["task"] for e in events(tmp_path)] == ["t1", "t2"]

        # A held key: one keydown, then the repeats autorepeat sends every 33 ms, for 0.7 s
        page.keyboard.down("2")
        page.evaluate("""() => new Promise((resolve) => {
            let sent = 0;
            const timer = setInterval(() => {
                document.body.dispatchEvent(new KeyboardEvent("keydown", {key: "2", repeat: true, bubbles: true}));
                if (++sent === 21) { clearInterval(timer); resolve(); }
            }, 33);
        })""")
        page.keyboard.up("2")
        showing(page, 4)
        page.wait_for_timeout(300)
        expect(page.locator("#progress")).to_have_text("3 / 5 answered, 2 to go")
        page.keyboard.press("u")  # undo, then at once a key: t3 comes back and the key is ignored
        page.keyboard.press("1")
        showing(page, 3)
        page.wait_for_timeout(300)
        page.keyboard.press("t")
        showing(page, 4)
    assert [(e["event"], e["task"]) for e in events(tmp_path)] == [
        ("answer", "t1"), ("answer", "t2"), ("answer", "t3"), ("undo", "t3"), ("answer", "t3")]
    assert [(a["task"], a["choice"]) for a in final_answers(tmp_path / "rankings.jsonl")] == [
        ("t1", ("first", "second")[left_index("ana", "t1")]), ("t2", ("second", "first")[left_index("ana", "t2")]),
        ("t3", "tie")]


def test_a_task_someone_else_is_ranking_is_not_shown(tmp_path, page, browser):
    from playwright.sync_api import expect

    with serving(write_tasks(tmp_path, [task(1)])) as url:
        page.goto(f"{url}/?annotator=ana")
        showing(page, 1)
        bob = browser.new_page()
        bob.goto(f"{url}/?annotator=bob")
        expect(bob.locator("#message")).to_have_text(
            "1 task is being ranked by others right now; reload in a few minutes.")
        expect(bob.locator("#progress")).to_have_text("0 / 1 answered, 0 to go, 1 being ranked by others")
        expect(bob.locator("#rank")).to_be_hidden()
        page.keyboard.press("s")  # ana skips: the task is free again
        expect(page.locator("#message")).to_have_text("All done: no task is left for ana. Thank you!")
        bob.reload()
        showing(bob, 1)
        bob.close()


def test_guidelines_panel_shows_the_folder_text_as_text_open_on_first_visit(tmp_path, page):
    from playwright.sync_api import expect

    guidelines = "Prefer the kinder reply.\n\n<img src=x onerror=\"window.__pwned = 1\">\n<b>not bold</b>"
    write_tasks(tmp_path, [task(1)])
    with serving(tmp_path) as url:
        page.goto(f"{url}/?annotator=ana")
        showing(page, 1)
        panel = page.locator("#guidelines")
        expect(page.locator("#guidelines-text")).to_contain_text(" ".join(DEFAULT_GUIDELINES.split()[:6]))
        assert panel.evaluate("node => node.open") is True
        panel.locator("summary").click()  # closed, and remembered
        assert panel.evaluate("node => node.open") is False

        (tmp_path / "guidelines.md").write_text(guidelines)
        page.reload()
        showing(page, 1)
        expect(page.locator("#guidelines-text")).to_have_text(guidelines)
        assert panel.evaluate("node => node.open") is False
        panel.locator("summary").click()
        assert page.locator("#guidelines-text").inner_text() == guidelines  # as rendered: the line breaks show
        assert page.locator("#guidelines *").evaluate_all("nodes => nodes.map(n => n.tagName)") == ["SUMMARY", "DIV"]
        assert page.evaluate("window.__pwned") is None
