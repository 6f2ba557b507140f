"""The data contract: resumable JSONL, manifests, and prompt/preference loading from every supported format."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from rlaif.loaders import load_hh_preferences, load_prompts, parse_transcript
from rlaif.records import (
    DataError,
    JsonlWriter,
    Manifest,
    Tally,
    dumps_json,
    dumps_line,
    iter_jsonl,
    number,
    open_stage,
    parse_yaml,
    read_jsonl,
    read_text,
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


def test_whole_last_row_longer_than_64_kib_gets_its_newline_at_the_end(tmp_path):
    # The tail is read back in 64 KiB steps; the newline must still go at the end of the file, not inside the row.
    path = tmp_path / "rows.jsonl"
    original = (json.dumps({"id": "a"}) + "\n" + json.dumps({"id": "b", "text": "x" * 100_000})).encode()
    path.write_bytes(original)
    with JsonlWriter(path) as w:
        assert w.done == {"a", "b"}
    assert path.read_bytes() == original + b"\n"
    assert ids_in(path) == ["a", "b"]


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


def test_hh_pairs_with_an_empty_or_identical_reply(tmp_path):
    def hh(chosen, rejected):
        return {"chosen": f"\n\nHuman: Hi\n\nAssistant: {chosen}",
                "rejected": f"\n\nHuman: Hi\n\nAssistant: {rejected}"}

    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [hh("Hello!", "Go."), hh("Same", "Same"), hh("Ok", "")]),
                    encoding="utf-8")
    with pytest.raises(DataError, match=r"hh.jsonl:3: rejected: is empty"):
        load_hh_preferences(path)
    tally = Tally("pairs")
    rows = load_hh_preferences(path, skip_empty=True, tally=tally)
    assert [r["chosen"][0]["content"] for r in rows] == ["Hello!"]
    assert tally.summary() == "read 3 pairs, used 1, left out 2 (empty_reply 1, identical_replies 1)"


def test_number_refuses_what_is_not_a_finite_number():
    assert number(3, "f", 1, "x") == 3.0 and number(0.5, "f", 1, "p", 0, 1) == 0.5
    for value, message in ((float("nan"), "expected a finite number, got nan"), (True, "expected a number, not True"),
                           ("1", "expected a number, not '1'"), (10**400, "expected a finite number, got inf"),
                           (-(10**400), "expected a finite number, got -inf")):
        with pytest.raises(DataError, match=f"^f:1: x: {message}$"):
            number(value, "f", 1, "x")
    with pytest.raises(DataError, match=r"^f:2: p: expected a finite number between 0 and 1, got 2$"):
        number(2, "f", 2, "p", 0, 1)
    with pytest.raises(DataError, match=r"^f: n: expected a finite number > 0, got 0$"):
        number(0, "f", None, "n", positive=True)


def test_yaml_keeps_unicode_line_separators_as_text(tmp_path):
    # PyYAML reads YAML 1.1, where U+2028, U+2029 and U+0085 end a line; as text (YAML 1.2) they are kept.
    text = "a: x\u2028y\nb: \"x\x85y\"\nc: |\n  x\u2029y\n  z\nd: [x\u2028y, 2]\n"
    value, node = parse_yaml(text)
    assert value == {"a": "x\u2028y", "b": "x\x85y", "c": "x\u2029y\nz\n", "d": ["x\u2028y", 2]}
    assert [key.start_mark.line + 1 for key, _ in node.value] == [1, 2, 3, 6]
    assert parse_yaml("") == (None, None)
    config = {"prompt": "a\u2028b\x85c\u2029d", "list": ["\x85"], "rounds": 2}
    write_config(tmp_path, config)
    assert parse_yaml(read_text(tmp_path / "config.yaml"))[0] == config


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


@pytest.mark.parametrize("content, where", [
    ('{"messages": [{"role": "system", "content": "Be brief."}]}\n',
     "p.jsonl:1: messages: has no user turn (a prompt ends with the user turn to answer)"),
    ('{"messages": [{"role": "assistant", "content": "Hi"}]}\n', "p.jsonl:1: messages: has no user turn"),
    ('{"prompt": "x"}\n{"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}\n',
     "p.jsonl:2: prompt[1].role: a prompt ends with the user turn to answer, not 'assistant'"),
    ('{"prompt": [{"role": "system", "content": "Be brief."}]}\n', "p.jsonl:1: prompt: has no user turn"),
])
def test_a_prompt_ends_with_a_user_turn(tmp_path, content, where):
    (tmp_path / "p.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_prompts(tmp_path / "p.jsonl")
    assert where in str(info.value)


@pytest.mark.parametrize(("name", "text"), [
    ("sheets.csv", "Timestamp,ID,Prompt,Tags\n2024-05-01,a,Hello there,red-team\n2024-05-01,b,Bye,\n,,,\n,,,\n"),
    ("spaces.csv", "id , prompt, TAGS \na,Hello there,red-team\nb,Bye,\n"),
    ("excel-eu.csv", "id;prompt;tags\na;Hello there;red-team\nb;Bye;\n"),
    ("prompts.tsv", "id\tprompt\ttags\na\tHello there\tred-team\nb\tBye\t\n"),
])
def test_prompt_csv_and_tsv_as_spreadsheets_export_them(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")
    rows = load_prompts(tmp_path / name)
    assert [(r["id"], r["prompt"][0]["content"], r.get("tags")) for r in rows] == [("a", "Hello there", ["red-team"]),
                                                                                   ("b", "Bye", None)]


def test_prompt_csv_errors_name_the_column(tmp_path):
    (tmp_path / "p.csv").write_text("Question,Tags\nHi,x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p.csv:1: prompt: no 'prompt' column \(columns: question, tags\)"):
        load_prompts(tmp_path / "p.csv")
    (tmp_path / "p.csv").write_text("id,prompt\na,Hello, there\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p.csv:2: 3 cells under 2 columns; a cell holding ',' must be in double"):
        load_prompts(tmp_path / "p.csv")
    (tmp_path / "p.csv").write_text("Prompt,prompt\nHi,Yo\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p.csv:1: prompt: column named twice"):
        load_prompts(tmp_path / "p.csv")


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

    # Lines 87, 517 and 926 have an empty chosen reply: refused like `rlaif rankings import` does, or left out.
    with pytest.raises(DataError, match=r"hh-harmless-dev.jsonl:87: chosen: is empty \(skip_empty leaves"):
        load_hh_preferences(hh_data)
    tally = Tally("pairs")
    prefs = load_hh_preferences(hh_data, skip_empty=True, tally=tally)
    assert len(prefs) == 997 and len({p["id"] for p in prefs}) == 997
    assert tally.counts() == {"read": 1000, "used": 997, "left_out": 3, "left_out_empty_reply": 3}
    # The data README counts 706 multi-turn dialogues by occurrences of "Human:"; six of those are single-turn
    # dialogues whose assistant reply itself contains "Human:" (rows 105, 197, 232, 679, 796, 822), so 700 are real;
    # one of them (line 87) has an empty reply, which moves the later rows up by one.
    assert sum(1 for p in prefs if len(p["prompt"]) > 1) == 699
    assert "Human:" in prefs[104]["chosen"][0]["content"] and len(prefs[104]["prompt"]) == 1
    first_100 = Tally("pairs")
    assert len(load_hh_preferences(hh_data, 100, skip_empty=True, tally=first_100)) == 99
    assert first_100.summary() == "read 100 pairs, used 99, left out 1 (empty_reply 1)"
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


def test_a_lone_surrogate_escape_is_refused_where_it_is_read(tmp_path):
    # JSON lets "\ud800" through, but it is half a UTF-16 pair, not a character: UTF-8 cannot hold it, so a stage
    # that read it would crash writing its first row. A pair is one character (an emoji) and reads as such; an
    # escaped backslash followed by "ud800" is plain text.
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "emoji \\ud83d\\ude00 and literal \\\\ud800"}\n{"prompt": "half \\udc00 a pair"}\n',
                    encoding="utf-8")
    with pytest.raises(DataError, match=r"prompts.jsonl:2: \\udc00 at column 18 is half of a UTF-16 surrogate pair"):
        list(iter_jsonl(path))
    path.write_text('{"prompt": "emoji \\ud83d\\ude00 and literal \\\\ud800"}\n', encoding="utf-8")
    assert list(iter_jsonl(path)) == [(1, {"prompt": "emoji \U0001F600 and literal \\ud800"})]


def test_undefined_numbers_are_written_as_null_never_as_bare_nan(tmp_path):
    # json.dumps writes NaN and Infinity, which are not JSON: jq, JavaScript and strict parsers refuse the file.
    row = {"id": "a", "p": float("nan"), "scores": [1.5, float("inf"), -float("inf")], "nested": {"x": float("nan")}}
    assert json.loads(dumps_line(row), parse_constant=pytest.fail) == {"id": "a", "p": None, "scores": [1.5, None, None],
                                                                        "nested": {"x": None}}
    assert json.loads(dumps_json(row), parse_constant=pytest.fail)["scores"] == [1.5, None, None]
    with JsonlWriter(tmp_path / "rows.jsonl") as out:
        out.write(row)
    assert "NaN" not in (tmp_path / "rows.jsonl").read_text(encoding="utf-8")
    manifest = Manifest(stage="x", counts={"n": 1}, extra={"ece": float("nan")})
    manifest.save(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"), parse_constant=pytest.fail)["extra"] \
        == {"ece": None}


def test_an_hh_transcript_whose_reply_follows_an_assistant_turn_is_refused(tmp_path):
    from rlaif.rankings import import_rankings

    twice = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nAssistant: "
    (tmp_path / "hh.jsonl").write_text(json.dumps({"chosen": twice + "Bye.", "rejected": twice + "No."}) + "\n",
                                       encoding="utf-8")
    for read in (load_hh_preferences, import_rankings):
        with pytest.raises(DataError, match=r"hh.jsonl:1: chosen\[1\].role: a prompt ends with the user turn to answer, "
                                            r"not 'assistant'"):
            read(tmp_path / "hh.jsonl")


def test_a_stage_directory_takes_new_settings_until_its_first_output(tmp_path):
    """A run that stopped on an error before any row (a typo in a reward function, a missing file) leaves only its
    settings: the corrected command starts over. Once a row is written, other settings are refused."""
    stage = tmp_path / "label"
    open_stage(stage, "label", {"reward_fn": "toy:missing", "batch_size": 4})
    open_stage(stage, "label", {"reward_fn": "toy:fixed", "batch_size": 4})
    (stage / "preferences.jsonl").write_text("")  # an empty file is no output either
    open_stage(stage, "label", {"reward_fn": "toy:fixed", "batch_size": 8})
    with JsonlWriter(stage / "preferences.jsonl") as writer:
        writer.write({"id": "a"})
    open_stage(stage, "label", {"reward_fn": "toy:fixed", "batch_size": 2}, volatile=["batch_size"])
    with pytest.raises(DataError, match="reward_fn: this label run was made with 'toy:fixed', now 'toy:other'"):
        open_stage(stage, "label", {"reward_fn": "toy:other", "batch_size": 2})



def test_a_directory_saved_before_a_setting_existed_resumes_while_the_setting_keeps_its_old_value(tmp_path):
    """Reward's group_by_length came after its first runs, which drew shuffled batches (ADDED: False). A reward
    directory saved without the setting resumes at False and is refused, by name and with the value it ran as, at
    True."""
    from rlaif.reward import RewardConfig

    stage = tmp_path / "reward"
    open_stage(stage, "reward", {"seed": 0})  # written by a version without the setting
    (stage / "metrics.json").write_text("{}")
    assert RewardConfig.ADDED["group_by_length"] is False
    with pytest.raises(DataError, match=r"group_by_length: this reward run was made before group_by_length existed, "
                                        r"which it ran as False, now True\. Rerun with the same settings"):
        open_stage(stage, "reward", {"seed": 0, "group_by_length": True}, added=RewardConfig.ADDED)
    with pytest.raises(DataError, match="group_by_length: this reward run was made with None, now False"):
        open_stage(stage, "reward", {"seed": 0, "group_by_length": False})  # a setting not declared as added
    open_stage(stage, "reward", {"seed": 0, "group_by_length": False}, added=RewardConfig.ADDED)
    assert "group_by_length: false" in (stage / "config.yaml").read_text()  # saved from now on


def test_utf16_without_its_mark_is_named_not_read_as_text(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_bytes("prompt\nhello\n".encode("utf-16-le"))
    with pytest.raises(DataError, match=r"prompts.csv:1: a NUL byte: not UTF-8 text \(UTF-16 without a byte-order"):
        read_text(path)
    path.write_bytes("prompt\nhello\n".encode("utf-16"))  # with its mark: read
    assert read_text(path) == "prompt\nhello\n"


def test_a_key_written_twice_in_a_json_object_is_refused_at_any_depth(tmp_path):
    path = tmp_path / "twice.jsonl"
    path.write_text('{"prompt": "a", "chosen": "x", "rejected": "z"}\n'
                    '{"prompt": "a", "chosen": "x", "rejected": "z", "chosen": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"twice.jsonl:2: chosen: key written twice in one object \(a JSON reader keeps "
                                        r"only the last value, silently\); remove one"):
        list(iter_jsonl(path))
    path.write_text('{"prompt": [{"role": "user", "content": "a", "content": "b"}]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"twice.jsonl:1: content: key written twice"):
        load_prompts(path)
    path.write_text('{"a": {"b": 1}, "c": [{"b": 2}, {"b": 3}], "d": {"e": {"f": null}}}\n', encoding="utf-8")
    assert list(iter_jsonl(path)) == [(1, {"a": {"b": 1}, "c": [{"b": 2}, {"b": 3}], "d": {"e": {"f": None}}})]


def test_a_prompt_csv_row_missing_its_last_cells_names_the_empty_field(tmp_path):
    path = tmp_path / "p1.csv"
    path.write_text("id,prompt\np1\np2,hello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p1.csv:2: prompt: is empty"):
        load_prompts(path)
    path.write_text("id,prompt,tags\np1,hi\np2,hello,red-team\n", encoding="utf-8")  # no tags: none
    assert [(r["id"], r.get("tags")) for r in load_prompts(path)] == [("p1", None), ("p2", ["red-team"])]


def test_a_stage_directory_where_a_file_is_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for directory in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "label"):
        with pytest.raises(DataError, match=r"notes.txt: is a file, not a directory, so the label directory .* cannot "
                                            r"be made; give --out a directory"):
            open_stage(directory, "label", {})
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_loaders_that_moved_to_rlaif_loaders_still_import_from_records():
    from rlaif import loaders
    from rlaif.records import content_id, load_hh_preferences, load_prompts, parse_transcript

    assert (load_prompts, load_hh_preferences, content_id, parse_transcript) == (
        loaders.load_prompts, loaders.load_hh_preferences, loaders.content_id, loaders.parse_transcript)
    with pytest.raises(ImportError):
        from rlaif.records import no_such_name  # noqa: F401
