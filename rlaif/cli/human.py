"""People in the loop: `rlaif rank serve`, the local page where people rank pairs of replies (rlaif/rank_serve.py)."""

from __future__ import annotations

from pathlib import Path

import click

from rlaif.cli import _Group, cli, out, shown


@cli.group(cls=_Group)
def rank() -> None:
    """Rank pairs of model replies by hand, in a local web page (docs/humans.md)."""


@rank.command()
@click.argument("tasks_dir", metavar="TASKS_DIR", type=click.Path(file_okay=False))
@click.option("--annotator", help="Your name, put in the address printed and opened (?annotator=NAME); others "
                                  "who open the bare address type their own.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Any but a loopback one needs the random token in the printed URL.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port; 0 picks a free one.")
@click.option("--open/--no-open", "open_browser", default=True, show_default=True,
              help="Open the page in your web browser.")
def serve(tasks_dir: str, annotator: str | None, host: str, port: int, open_browser: bool) -> None:
    """Serve a page where people rank the pairs in TASKS_DIR/tasks.jsonl, one at a time.

    \b
    Each person sees the conversation and the two replies side by side (in an order drawn per person and task)
    and answers with a key or a button: 1 or ← (left is better), 2 or → (right), 3 or t (tie), s (skip), u (undo the
    last answer); a note is optional. Answers are appended to TASKS_DIR/rankings.jsonl as they are given, so
    closing the page or stopping the server loses nothing: reopening it shows the next unanswered task.
    `rlaif rankings export` writes TASKS_DIR; `rlaif rankings import` reads the answers back.

    \b
    Examples:
      rlaif rank serve tasks/ --annotator ana
      rlaif rank serve tasks/ --host 0.0.0.0 --port 9000      others on your network, with a token
    """
    import secrets
    import socket
    import webbrowser
    from urllib.parse import urlencode

    import uvicorn
    from filelock import FileLock, Timeout

    from rlaif.rank_serve import ANSWERS_FILE, bind, create_app, is_loopback
    from rlaif.records import ConfigError

    loopback = is_loopback(host)
    token = None if loopback else secrets.token_urlsafe(16)
    app = create_app(tasks_dir, token=token, check_host=loopback)
    # One server per folder: which task is shown to whom (its lease) lives in the server's memory, and a second
    # server would hand out the same tasks again. Held until this process ends (released by the OS if it dies).
    serving = FileLock(str(Path(tasks_dir) / ".rank-serve.lock"))
    try:
        serving.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"{tasks_dir}: another `rlaif rank serve` is serving this folder; open its address "
                          "instead (everyone can rank through one server, on --host 0.0.0.0 for other machines)") \
            from None
    try:
        sock = bind(host, port)
    except OSError as e:
        raise ConfigError(f"port, host: cannot listen on {host}:{port} ({e.strerror}); --port 0 picks a free "
                          "port") from None
    shown_host = socket.gethostname() if host in ("0.0.0.0", "::") else host
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
    base, access, name = f"http://{shown_host}:{sock.getsockname()[1]}/", {"token": token} if token else {}, \
        (annotator or "").strip()
    url = base + (f"?{urlencode(access)}" if access else "")
    mine = f"{base}?{urlencode({**access, 'annotator': name})}" if name else url  # no name assumed for others
    tasks = len(app.state.tasks)
    yours = f" (yours: {shown(mine)})" if mine != url else ""
    out.print(f"Ranking {tasks} task{'s' if tasks != 1 else ''}; answers go to {shown(tasks_dir)}/{ANSWERS_FILE}.\n"
              f"Open [bold]{shown(url)}[/bold]{yours}\nPress Ctrl-C to stop.", soft_wrap=True)
    if open_browser:
        webbrowser.open(mine)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down; it raises the Ctrl-C again for the caller
        pass
    out.print("Stopped. Every answer given is saved.")
