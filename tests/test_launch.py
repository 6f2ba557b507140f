"""rlaif.launch's care of the processes it starts: what a killed parent leaves behind, and how a launcher is
stopped."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rlaif.launch import stop_launcher


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a child of the killed parent is reaped by init; until then it is a zombie, which counts as gone
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(") ")[1].startswith("Z"):
                    return True
        except FileNotFoundError:  # reaped since
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", ["tied_to_this_process", "spawned"])
def test_what_a_process_starts_dies_with_it_when_it_is_killed_outright(tmp_path, how):
    """A server started with tied_to_this_process, or a stage in `spawned`'s child (vLLM's, holding the GPU), gets
    SIGTERM when its parent is killed with SIGKILL, which no handler of the parent's could see."""
    pid_file = tmp_path / "child.pid"
    parent = tmp_path / "parent.py"
    parent.write_text(textwrap.dedent(f"""
        import os, subprocess, sys, time
        from pathlib import Path
        from rlaif.launch import tied_to_this_process
        from rlaif.engines import spawned

        def child():
            Path({str(pid_file)!r}).write_text(str(os.getpid()))
            time.sleep(120)

        if __name__ == "__main__":
            if {how!r} == "spawned":
                spawned(child)
            else:
                server = subprocess.Popen(tied_to_this_process([sys.executable, "-c", "import time; time.sleep(120)"]))
                Path({str(pid_file)!r}).write_text(str(server.pid))
                time.sleep(120)
    """))
    started = subprocess.Popen([sys.executable, str(parent)])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline and started.poll() is None, "the child never started"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        time.sleep(0.5)
        started.kill()
        started.wait()
        assert _gone(child), f"the child {child} outlived its parent"
    finally:
        started.kill()


def _launcher(tmp_path, ignores: tuple[str, ...]):
    script = tmp_path / "launcher.py"
    script.write_text("import signal, sys, time\n"
                      + "".join(f"signal.signal(signal.{name}, signal.SIG_IGN)\n" for name in ignores)
                      + "print('ready', flush=True)\ntime.sleep(60)\n")
    launcher = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert launcher.stdout.readline() == "ready\n"
    return launcher


@pytest.mark.parametrize(("ignores", "ended_by"), [((), -signal.SIGINT), (("SIGINT",), -signal.SIGTERM),
                                                   (("SIGINT", "SIGTERM"), -signal.SIGKILL)])
def test_a_launcher_is_asked_to_stop_before_it_is_killed(tmp_path, ignores, ended_by):
    """SIGINT first (on which accelerate's launcher stops its workers), then SIGTERM, each given its time; SIGKILL
    only for a launcher that heeds neither, as it leaves its workers running."""
    launcher = _launcher(tmp_path, ignores)
    started = time.monotonic()
    stop_launcher(launcher, patience=1.0)
    assert launcher.returncode == ended_by and time.monotonic() - started < 10


def test_sigterm_to_a_run_during_a_launched_stage_stops_the_launcher_as_ctrl_c_does(tmp_path, monkeypatch):
    """A scheduler's SIGTERM to `rlaif run` while a stage runs under accelerate launch: the launcher is sent SIGINT
    (on which it stops its workers), the run ends as on Ctrl-C, and SIGTERM's handler is given back. The launcher
    here is a stand-in script that records the signal, not accelerate's."""
    import threading

    import rlaif.launch
    from rlaif.pipeline import Step
    from rlaif.sft import SFTConfig

    ready, got = tmp_path / "ready", tmp_path / "got"
    fake = tmp_path / "accelerate"
    fake.write_text(f"#!{sys.executable}\nimport signal, sys, time\n"
                    f"signal.signal(signal.SIGINT, lambda *_: (open({str(got)!r}, 'w').write('SIGINT'), sys.exit(1)))\n"
                    f"open({str(ready)!r}, 'w').close()\ntime.sleep(60)\n")
    fake.chmod(0o755)
    monkeypatch.setattr(rlaif.launch, "accelerate_path", lambda: fake)

    def terminate():
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    step = Step(1, "sft", tmp_path / "sft", SFTConfig(data="sft.jsonl", out=str(tmp_path / "sft")), processes=2)
    step.directory.mkdir()
    threading.Thread(target=terminate, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        rlaif.launch.launched(step)
    assert got.read_text() == "SIGINT" and signal.getsignal(signal.SIGTERM) is before
