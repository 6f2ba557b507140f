"""The data contract: resumable JSONL, manifests, and prompt/preference loading from every supported format."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from rlaif.records import (
    DataError,
    JsonlWriter,
    Manifest,
    load_hh_preferences,
    load_prompts,
    parse_transcript,
    read_jsonl,
    write_config,
)


def ids_in(path):
    return [row["id"] for row in read_jsonl(path)]


def test_resume_after_crash_with_torn_last_line_gives_each_id_once(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as w:
        for i in range(5):
            w.write({"id": f"r{i}", "text": "x" * i})
    with open(path, "ab") as f:  # the crash: half of row 5 reached the disk
        f.write(b'{"id": "r5", "text": "xxx')

    w = JsonlWriter(path)
    assert w.done == {f"r{i}" for i in range(5)}
    for i in range(10):  # the rerun walks all the work again and skips what is done
        if f"r{i}" not in w.done:
            w.write({"id": f"r{i}", "text": "y"})
    w.close()
    assert ids_in(path) == [f"r{i}" for i in range(10)]
    assert path.read_bytes().endswith(b"\n")


def test_whole_last_row_without_newline_is_kept(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}', encoding="utf-8")
    with JsonlWriter(path) as w:
        assert w.done == {"a", "b"}
        w.write({"id": "c"})
    assert ids_in(path) == ["a", "b", "c"]


def test_writing_a_done_id_again_is_refused(tmp_path):
    with JsonlWriter(tmp_path / "out.jsonl") as w:
        w.write({"id": "a"})
        with pytest.raises(ValueError, match="already written"):
            w.write({"id": "a"})


WRITER = textwrap.dedent("""
    import sys, time
    from rlaif.records import JsonlWriter
    with JsonlWriter(sys.argv[1]) as w:
        for i in range(100000):
            if f"r{i}" not in w.done:
                w.write({"id": f"r{i}", "pad": "z" * 2000})
                if i == 200:
                    print("ready", flush=True)
""")


def test_kill_mid_run_then_rerun_finishes_exactly_once(tmp_path):
    path = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(ids_in(path))
    assert 200 < written < 100000
    subprocess.run([sys.executable, "-c", WRITER, str(path)], check=True, stdout=subprocess.DEVNULL)
    ids = ids_in(path)
    assert ids == [f"r{i}" for i in range(100000)]


def test_bad_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        list(read_jsonl(path))


def test_manifest_and_config_round_trip(tmp_path):
    data = tmp_path / "in.txt"
    data.write_text("hello\n")
    m = Manifest(stage="critique")
    m.add_input(data)
    m.counts["written"] = 3
    m.save(tmp_path)
    back = Manifest.load(tmp_path)
    assert back.counts == {"written": 3} and back.inputs[str(data)]["bytes"] == 6
    assert len(back.inputs[str(data)]["sha256"]) == 64 and "torch" in back.versions
    write_config(tmp_path, {"rounds": 4, "model": "smollm2-135m-instruct"})
    assert (tmp_path / "config.yaml").read_text().startswith("rounds: 4")


def test_prompts_from_jsonl_csv_and_text(tmp_path):
    (tmp_path / "p.jsonl").write_text(
        '{"id": "a", "prompt": "Hi", "tags": ["helpful"]}\n\n'
        '{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Yo"}]}\n'
        '{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}\n', encoding="utf-8")
    rows = load_prompts(tmp_path / "p.jsonl")
    assert rows[0] == {"id": "a", "prompt": [{"role": "user", "content": "Hi"}], "tags": ["helpful"], "source": "p.jsonl"}
    assert rows[1]["prompt"][0]["role"] == "system" and rows[1]["id"].startswith("p-")
    assert rows[2]["prompt"] == [{"role": "user", "content": "Q"}]  # the old answer is dropped, the question kept

    (tmp_path / "p.csv").write_text('id,prompt,tags\nx,"Hello, there",red-team;weapons\n,Plain,\n', encoding="utf-8")
    rows = load_prompts(tmp_path / "p.csv")
    assert rows[0]["id"] == "x" and rows[0]["tags"] == ["red-team", "weapons"]
    assert rows[0]["prompt"][0]["content"] == "Hello, there"
    assert rows[1]["prompt"][0]["content"] == "Plain" and rows[1]["id"].startswith("p-")

    (tmp_path / "p.txt").write_text("one\n\ntwo\none\n", encoding="utf-8")
    rows = load_prompts(tmp_path / "p.txt")
    assert [r["prompt"][0]["content"] for r in rows] == ["one", "two", "one"]
    assert rows[2]["id"] == rows[0]["id"] + "-2"  # repeats stay distinct and stable
    assert [r["id"] for r in load_prompts(tmp_path / "p.txt")] == [r["id"] for r in rows]


@pytest.mark.parametrize("content, where", [
    ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "p.jsonl:2: id: duplicate id 'a' (first on line 1)"),
    ('{"id": "a", "text": "x"}\n', "p.jsonl:1: prompt: missing"),
    ('{"prompt": ""}\n', "p.jsonl:1: prompt: is empty"),
    ('{"prompt": [{"role": "bot", "content": "x"}]}\n', "p.jsonl:1: prompt[0].role: expected 'system', 'user' or 'assistant'"),
    ('{"prompt": "x", "tags": "red-team"}\n', "p.jsonl:1: tags: expected a list"),
    ('["not", "an", "object"]\n', "p.jsonl:1: expected a JSON object"),
    ('{"chosen": "no transcript here"}\n', "p.jsonl:1: chosen: expected a transcript"),
])
def test_prompt_errors_name_file_line_and_field(tmp_path, content, where):
    (tmp_path / "p.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_prompts(tmp_path / "p.jsonl")
    assert where in str(info.value)


def test_parse_transcript():
    turns = parse_transcript("\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: See you")
    assert turns == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                     {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]


def test_hh_rlhf_prompts_and_preferences(hh_data, tmp_path):
    prompts = load_prompts(hh_data)
    assert len(prompts) == 1000 and len({p["id"] for p in prompts}) == 1000
    first = json.loads(hh_data.open().readline())
    assert prompts[0]["prompt"] == [parse_transcript(first["chosen"])[0]] and prompts[0]["source"] == "hh-rlhf"
    assert all(len(p["prompt"]) == 1 and p["prompt"][0]["role"] == "user" for p in prompts)

    prefs = load_hh_preferences(hh_data)
    assert len(prefs) == 1000 and len({p["id"] for p in prefs}) == 1000
    # The data README counts 706 multi-turn dialogues by occurrences of "Human:"; six of those are single-turn
    # dialogues whose assistant reply itself contains "Human:" (rows 105, 197, 232, 679, 796, 822), so 700 are real.
    assert sum(1 for p in prefs if len(p["prompt"]) > 1) == 700
    assert "Human:" in prefs[105]["chosen"][0]["content"] and len(prefs[105]["prompt"]) == 1
    row = prefs[0]
    assert row["source"] == "human" and row["p_chosen"] == 1.0
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chosen"] != row["rejected"]

    # Written through the contract, they load with `datasets` as a TRL conversational preference dataset.
    from datasets import load_dataset

    out = tmp_path / "prefs.jsonl"
    with JsonlWriter(out) as w:
        for p in prefs[:50]:
            w.write(p)
    ds = load_dataset("json", data_files=str(out), split="train")
    assert len(ds) == 50 and {"prompt", "chosen", "rejected", "p_chosen", "source"} <= set(ds.column_names)
