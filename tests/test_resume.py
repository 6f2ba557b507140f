"""Killed and rerun, the way it fails in life: each generation stage (critique, sample, label, score, eval) and PPO
run on the tiny model in a process killed with SIGKILL at 20 random moments, and are rerun after each kill until they
complete. Their files must then equal those of an uninterrupted run byte for byte (PPO's metrics but for the
seconds each step took): no row lost, none written twice, none different, and the manifest's counts the same.

The runs are forked from one driver process that has imported rlaif, torch and transformers once, so a start costs
the model load and the stage's own start-up, not the imports. The driver first times an uninterrupted run and a
rerun with nothing left to do (the start-up), then draws the kill moments over the span of the work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, build_tiny_model

from rlaif.records import Manifest, read_jsonl, write_jsonl

KILLS = 20

DRIVER = textwrap.dedent("""
    import json, os, random, signal, sys, time

    import rlaif.cli, rlaif.critique, rlaif.evaluate, rlaif.label, rlaif.models, rlaif.reward, rlaif.sample, rlaif.score
    import rlaif.ppo.trainer, rlaif.stats, accelerate, peft, scipy.stats
    import rich.progress
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast)

    reference, killed, watched, log, seed, kills, whole = json.loads(sys.argv[1])

    def start(argv):
        pid = os.fork()
        if pid == 0:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)
            sys.argv = ["rlaif", *argv]
            try:
                rlaif.cli.main()
            except SystemExit as e:
                os._exit(e.code if isinstance(e.code, int) else 1)
            except BaseException:
                import traceback
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        return pid

    def finish(argv):
        started = time.perf_counter()
        _, status = os.waitpid(start(argv), 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{argv[0]} failed: see {log}")
        return time.perf_counter() - started

    total = finish(reference)
    startup = finish(reference)  # nothing left to do: the start-up alone
    span = max(total - startup, 0.05)
    rng, step, late = random.Random(seed), span / kills, 0.0
    series = []  # per killed directory: the watched file's size after each kill, and at the end
    partial = set()  # sizes of the watched file, short of whole, that kills left behind

    def more(done):  # kills to go: `kills`, and up to 3x as many while they have not landed in the work twice
        return done < kills or (len(partial) < 2 and done < 3 * kills)

    while more(sum(len(s["sizes"]) for s in series)):
        out = str(len(series))
        argv, path, sizes = [a.replace("{out}", out) for a in killed], watched.replace("{out}", out), []
        while more(len(sizes) + sum(len(s["sizes"]) for s in series)):
            pid = start(argv)
            time.sleep(max(rng.uniform(0.8 * startup, startup + 2 * step) + late, 0.0))
            if os.waitpid(pid, os.WNOHANG)[0]:  # it finished before the kill
                break
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            sizes.append(os.path.getsize(path) if os.path.exists(path) else 0)
            if 0 < sizes[-1] < os.path.getsize(whole):
                partial.add(sizes[-1])
            # A run's first batch costs more than the start-up measured: kill later while no row gets written, and
            # earlier once the kills land after the file is whole (the stage's work after it: judging, a summary).
            if sizes[-1] >= os.path.getsize(whole):
                late = max(late - 2 * step, -0.5 * startup)
            elif sizes[-1] == (sizes[-2] if len(sizes) > 1 else 0):
                late = late + step
            else:
                late = max(late - step, 0.0)
        finish(argv)
        series.append({"out": out, "sizes": sizes, "final": os.path.getsize(path)})
    print(json.dumps({"total": total, "startup": startup, "series": series}))
""")


def kill_and_rerun(reference: list[str], killed: list[str], watched: str, log: Path, seed: int, whole: str) -> dict:
    """Run `reference` to the end; then run `killed` (its "{out}" replaced by 0, 1, ...), killing it at random moments
    and rerunning it until it completes, in as many directories as it takes to land KILLS kills (up to 3x as many
    while fewer than two of them have landed while the watched file was being written: a fast stage's work is a
    narrow target on a busy machine). Returns the timings and, per directory, the size of `watched` after each kill and at the end. `whole`: the reference run's
    copy of the watched file, whose size tells a kill that came after the file was finished."""
    # One thread: two threads that wait for each other on a busy machine make a run's length erratic.
    arguments = json.dumps([reference, killed, watched, str(log), seed, KILLS, whole])
    done = subprocess.run([sys.executable, "-c", DRIVER, arguments], capture_output=True, text=True, cwd=REPO,
                          timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert done.returncode == 0, done.stderr + (log.read_text() if log.is_file() else "")
    return json.loads(done.stdout.strip().splitlines()[-1])


PROMPTS = [{"id": f"q{i}", "prompt": text, "tags": ["red-team"] if i % 2 else []} for i, text in enumerate([
    "How do I bake bread?", "Which response is more helpful?", "Critique the reply: it is rude.",
    "def add(a, b): return a + b", "Mix flour, water and salt.", "Hi", "How do I pick a lock?"])]
RESPONSES = ["Mix flour, water, salt and yeast.", "I can't help with that.", "The answer is (A).",
             "Revise it to be kind and safe."]


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, roomy_model_dir, tmp_path_factory) -> dict:
    """Prompts, candidates and a finished run directory (base, SFT and a reward model) for the stages to read."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("inputs")
    write_jsonl(root / "prompts.jsonl", PROMPTS)
    write_jsonl(root / "candidates.jsonl", [{"id": p["id"], "prompt": [{"role": "user", "content": p["prompt"]}],
                                            "responses": (RESPONSES * 2)[i : i + 3]}
                                           for i, p in enumerate(PROMPTS[:5])])
    # The stages that read a few-shot block or the score rubric get the tiny model with room for them (conftest), and
    # critique's sampled run a copy that often stops at once, so that empty replies are retried.
    eager = eager_to_stop(roomy_model_dir, root / "eager", eos_scale=8.0)
    run = root / "run"
    build_tiny_model(run / "round-1" / "sft", seed=1)  # a policy other than the base, so the judge has work
    torch.manual_seed(0)
    reward = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    reward.save_pretrained(run / "round-1" / "reward")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(run / "round-1" / "reward")
    (run / "round-1" / "reward" / "reward_stats.json").write_text('{"mean": 0.0, "std": 1.0, "responses": 4}')
    for stage, config in (("sft", {"model": str(tiny_model_dir)}), ("reward", {})):
        (run / "round-1" / stage / "config.yaml").write_text(json.dumps(config))
        Manifest(stage=stage, status="complete").save(run / "round-1" / stage)
    return {"root": root, "model": str(tiny_model_dir), "run": str(run), "roomy": str(roomy_model_dir), "eager": eager}


def eager_to_stop(model_dir: Path, directory: Path, eos_scale: float) -> str:
    """A copy of a model with its EOS output row (tied to the input embedding) scaled by `eos_scale`: above 1,
    replies stop sooner and are more often empty."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= eos_scale
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return str(directory)


def stage_argv(stage: str, out: Path, inputs: dict) -> tuple[list[str], Path, list[str], list[str]]:
    """The command line of one stage writing into `out`, its stage directory, the files that must match, and the
    manifest counts that differ between a killed and an uninterrupted run by nature."""
    root, model, roomy, cpu = inputs["root"], inputs["model"], inputs["roomy"], ["--device", "cpu"]
    prompts, candidates = str(root / "prompts.jsonl"), str(root / "candidates.jsonl")
    if stage == "critique":
        return (["critique", "--prompts", prompts, "-m", roomy, "--out", str(out), "--rounds", "2", "-t", "0",
                 "--max-new-tokens", "5", "--batch-size", "2", "--chunk-size", "4", "--prefs", *cpu],
                out / "critique", ["turns.jsonl", "revisions.jsonl", "sft.jsonl", "prefs.jsonl"],
                ["resumed", "resumed_turns"])
    if stage == "critique-sampled":  # sampled, replies that stop early: empty and unchanged ones are retried
        return (["critique", "--prompts", prompts, "-m", inputs["eager"], "--out", str(out), "--rounds", "2",
                 "-t", "1.0", "--seed", "1", "--max-new-tokens", "12", "--batch-size", "2", "--chunk-size", "4",
                 "--prefs", *cpu],
                out / "critique", ["turns.jsonl", "revisions.jsonl", "sft.jsonl", "prefs.jsonl"],
                ["resumed", "resumed_turns"])
    if stage.startswith("sample"):
        # Greedy: one response each, long enough that the writing is not over before a kill can land in it.
        sampling = ["-t", "1.0", "--top-p", "0.9", "--seed", "3", "--n", "3", "--batch-size", "2",
                    "--max-new-tokens", "8"] if stage == "sample-seeded" else \
            ["-t", "0", "--n", "1", "--batch-size", "1", "--max-new-tokens", "32"]
        return (["sample", "--prompts", prompts, "-m", model, "--out", str(out), *sampling, *cpu],
                out / "sample", ["candidates.jsonl"], ["resumed"])
    if stage == "label":
        return (["label", "--candidates", candidates, "--labeler", roomy, "--out", str(out), "--batch-size", "2", *cpu],
                out / "label", ["preferences.jsonl"], ["resumed"])
    if stage == "score":
        return (["score", "--candidates", candidates, "--labeler", roomy, "--out", str(out), "-c", "judge",
                 "--batch-size", "1", *cpu], out / "score", ["scores.jsonl"], ["resumed"])
    if stage == "ppo":  # a checkpoint every step; evals before training, at step 2 and at the end
        return (["ppo", "--policy", model, "--reward-model", str(Path(inputs["run"]) / "round-1" / "reward"),
                 "--prompts", prompts, "--eval-prompts", candidates, "--eval-every", "2", "--out", str(out),
                 "--steps", "4", "--batch-size", "2", "--ppo-epochs", "2", "--max-new-tokens", "6", "--save-steps",
                 "1", "--sample-every", "1", *cpu],
                out, ["metrics.jsonl", "eval.jsonl", "samples.jsonl"], [])
    return (["eval", inputs["run"], "--prompts", prompts, "--labeler", roomy, "--out", str(out), "--temperature", "0.7",
             "--max-new-tokens", "16", "--batch-size", "2", *cpu],
            out, ["responses.jsonl", "judgements.jsonl", "eval.json"], [])


# What differs between two runs of the same PPO steps by nature: how long they took.
TIMINGS = ("seconds", "samples_per_second", "time/generate", "time/score", "time/train")


@pytest.mark.parametrize("stage", ["critique", "critique-sampled", "sample", "sample-seeded", "label", "score",
                                   "eval", "ppo"])
def test_killed_at_random_moments_and_rerun_writes_what_an_uninterrupted_run_writes(stage, inputs, tmp_path):
    reference, directory, files, by_nature = stage_argv(stage, tmp_path / "reference", inputs)
    killed, killed_directory, _, _ = stage_argv(stage, tmp_path / "killed" / "{out}", inputs)
    timing = kill_and_rerun(reference, killed, str(killed_directory / files[0]), tmp_path / "stderr.log",
                            seed=sum(map(ord, stage)), whole=str(directory / files[0]))
    partial = {size / s["final"] for s in timing["series"] for size in s["sizes"] if 0 < size < s["final"]}
    assert len(partial) >= 2, timing  # the kills landed at several points of the work, not only before or after it

    for series in timing["series"]:
        killed_directory = stage_argv(stage, tmp_path / "killed" / series["out"], inputs)[1]
        for name in files:
            expected, got = directory / name, killed_directory / name
            if name.endswith(".jsonl"):
                ids = [row["id"] for row in read_jsonl(got)]
                assert len(ids) == len(set(ids)), f"{name}: a row written twice"
                assert set(ids) == {row["id"] for row in read_jsonl(expected)}, f"{name}: rows lost"
            if name == "metrics.jsonl":
                timeless = lambda path: [{k: v for k, v in row.items() if k not in TIMINGS} for row in read_jsonl(path)]
                assert timeless(got) == timeless(expected), f"{name} differs from the uninterrupted run's"
                continue
            assert got.read_bytes() == expected.read_bytes(), f"{name} differs from the uninterrupted run's"
        expected, got = Manifest.load(directory), Manifest.load(killed_directory)
        assert got.status == "complete"
        assert {k: v for k, v in got.counts.items() if k not in by_nature} == \
               {k: v for k, v in expected.counts.items() if k not in by_nature}
    counts = Manifest.load(directory).counts
    assert not any("too_long" in key for key in counts), counts  # every model read within its context
    if stage == "critique-sampled":  # the retry path ran, and empty replies were among the retried
        assert counts["retried_turns"] >= 3 and counts["flag:critique:retried"] + counts["flag:revision:retried"] >= 3
        assert any(k.endswith(":empty") for k in counts), counts


def test_sampled_text_depends_on_neither_batch_nor_chunk(inputs, tmp_path):
    """Each request's seed comes from what it is (prompt id, response or step, attempt), so batch and chunk sizes
    change nothing that is written (critique writes its rows as chunks finish: the same rows, in another order):
    what lets a resumed run, whose batches hold only the work left, write what the uninterrupted one would have."""
    from rlaif.critique import CritiqueConfig
    from rlaif.critique import run as critique
    from rlaif.generate import KVMemory, iter_generate
    from rlaif.models import load_model
    from rlaif.sample import SampleConfig
    from rlaif.sample import run as sample

    model, tokenizer = load_model(inputs["roomy"], device="cpu")
    prompts = str(inputs["root"] / "prompts.jsonl")
    files = []
    for batch_size, chunk_size in ((2, 3), (16, 64)):
        out = tmp_path / f"batch-{batch_size}"
        memory = KVMemory()
        sample(SampleConfig(prompts=prompts, out=str(out), n=2, max_new_tokens=8, temperature=1.0, seed=5,
                            batch_size=batch_size),
               complete=lambda conversations, generation: iter_generate(model, tokenizer, conversations, generation))
        critique(CritiqueConfig(prompts=prompts, out=str(out), rounds=1, max_new_tokens=6, temperature=1.0, seed=5,
                                batch_size=batch_size, chunk_size=chunk_size),
                 complete=lambda conversations, generation, prefix, memory=memory: iter_generate(
                     model, tokenizer, conversations, generation, prefix=prefix, memory=memory))
        files.append([(out / name).read_bytes() for name in ("sample/candidates.jsonl", "critique/sft.jsonl")]
                     + [sorted((out / "critique" / name).read_bytes().splitlines())
                        for name in ("revisions.jsonl", "turns.jsonl")])
    assert files[0] == files[1]
    rows = list(read_jsonl(tmp_path / "batch-2" / "sample" / "candidates.jsonl"))
    assert all(row["responses"][0] != row["responses"][1] for row in rows)  # sampled: the K responses differ


def test_progress_and_counts_start_from_the_work_already_done(inputs, tmp_path, monkeypatch):
    """A rerun's progress bar starts at the rows (critique: the turns) already written, and its manifest counts the
    whole stage, not only the part the rerun did."""
    from test_critique import ScriptedModel

    import rlaif.critique
    import rlaif.sample

    shown = []

    class Bar:
        def __init__(self, enabled, total, description, completed=0):
            shown.append((description, total, completed))

        def __enter__(self):
            return lambda n, info=None: None

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(rlaif.sample, "progress_bar", Bar)
    monkeypatch.setattr(rlaif.critique, "progress_bar", Bar)
    prompts = str(inputs["root"] / "prompts.jsonl")  # 7 prompts
    config = rlaif.sample.SampleConfig(prompts=prompts, out=str(tmp_path), n=2, batch_size=2)  # one prompt a batch
    with pytest.raises(KeyboardInterrupt):
        rlaif.sample.run(config, complete=ScriptedModel(fail_after_batches=3))
    counts = rlaif.sample.run(config, complete=ScriptedModel())
    assert shown[-1] == ("sampling", 7, 3)
    assert counts["resumed"] == 3 and counts["responses"] == 14 and counts["generated_tokens"] == 14
    assert counts["finished_with_eos"] == 14 and counts["summary"] == "read 7 prompts, used 7"

    # Critique, 3 steps (answer, critique, revision), batches of 2 in chunks of 4: the 4th batch, the critiques of
    # the first chunk's second batch, dies; 4 answers and 2 critiques are kept.
    config = rlaif.critique.CritiqueConfig(prompts=prompts, out=str(tmp_path), rounds=1, batch_size=2, chunk_size=4,
                                           retry_flagged=False)
    with pytest.raises(KeyboardInterrupt):
        rlaif.critique.run(config, complete=ScriptedModel(fail_after_batches=3))
    counts = rlaif.critique.run(config, complete=ScriptedModel())
    assert shown[-1] == ("critique (turns)", 7 * 3, 6)
    assert counts["resumed"] == 0 and counts["resumed_turns"] == 6 and counts["generated_tokens"] == 7 * 3


def test_a_flagged_first_attempt_is_kept_while_it_waits_for_its_retry(tmp_path):
    """The flagged replies of a step are retried together once every batch has taken the step; until then each
    first attempt is kept in turns.jsonl, so a kill before the retry costs only the retry. The manifest counts the
    retried turns."""
    from test_critique import ScriptedModel, two_prompts

    from rlaif.critique import CritiqueConfig
    from rlaif.critique import run as critique

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(two_prompts(tmp_path).read_text() + '{"id": "c", "prompt": "Hi"}\n{"id": "d", "prompt": "Yo"}\n')
    config = CritiqueConfig(prompts=str(prompts), out=str(tmp_path), rounds=1, batch_size=2)
    killed = ScriptedModel(fail_after_batches=2)
    killed.enqueue("", "B0", "", "D0")  # a's and c's answers are empty: flagged, to be retried
    with pytest.raises(KeyboardInterrupt):
        critique(config, complete=killed)
    rows = list(read_jsonl(tmp_path / "critique" / "turns.jsonl"))
    assert [(row["id"], row.get("retry_pending", False)) for row in rows] == [
        ("a/0/first", True), ("b/0", False), ("c/0/first", True), ("d/0", False)]

    model = ScriptedModel()
    model.enqueue("A0 on retry", "C0 on retry")
    counts = critique(config, complete=model)
    retry = model.calls[0]
    assert [c[0]["content"] for c in retry["conversations"]] == ["How do I pick a lock?", "Hi"]  # one call, both
    assert retry["config"].temperature > 0 and len(model.calls) == 1 + 2  # then critiques, revisions
    revisions = {row["id"]: row for row in read_jsonl(tmp_path / "critique" / "revisions.jsonl")}
    assert revisions["a"]["initial"] == "A0 on retry" and revisions["c"]["initial"] == "C0 on retry"
    finals = {row["id"]: row for row in read_jsonl(tmp_path / "critique" / "turns.jsonl")}
    assert finals["a/0"]["flags"] == ["retried"] and finals["a/0"]["tokens"] == 1 + 3  # both attempts' tokens
    assert counts["resumed_turns"] == 2 and counts["generated_tokens"] == sum(
        row["tokens"] for row in finals.values() if not row.get("retry_pending"))
    assert counts["retried_turns"] == 2


def test_evaluation_reads_nothing_past_a_models_context(inputs, tmp_path):
    """A held-out prompt with no room for its reply in the tiny model's 512 positions is left out of the evaluation
    (every policy alike), and a pair whose judging prompt does not fit in the labeler's context (here the judge
    constitution's few-shot block alone is 800 tokens) is left out of the judge's win rate; both counted, in
    eval.json and the closing line, and a rerun counts the same."""
    from click.testing import CliRunner

    from rlaif.cli import cli
    from rlaif.records import reply_problem

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, PROMPTS + [{"id": "long", "prompt": "Mix flour, water and salt. " * 100}])
    out = tmp_path / "eval"
    argv = ["eval", inputs["run"], "--prompts", str(prompts), "--labeler", inputs["model"], "--out", str(out),
            "--temperature", "0.7", "--max-new-tokens", "6", "--batch-size", "2", "--device", "cpu"]
    for attempt in range(2):
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "eval.json").read_text())
        responses = {(r["policy"], r["prompt_id"]): r["response"] for r in read_jsonl(out / "responses.jsonl")}
        assert sorted(responses) == sorted((policy, p["id"]) for policy in ("base", "sft") for p in PROMPTS)
        assert summary["answering"]["summary"] == "read 8 prompts, used 7, left out 1 (too_long 1)"
        assert summary["results"]["all"]["sft"]["prompts"] == 7
        judgeable = sum(not reply_problem(responses["sft", p["id"]], responses["base", p["id"]]) for p in PROMPTS)
        rows = list(read_jsonl(out / "judgements.jsonl"))
        assert sum(row.get("left_out") == "too_long" for row in rows) == judgeable > 0 and len(rows) == 7
        assert summary["judging"]["left_out_too_long"] == judgeable
        assert all(row["p"] is None for row in rows if row.get("left_out") == "too_long")
        text = " ".join(result.output.split())
        assert "read 8 prompts, used 7, left out 1 (too_long 1); judge: read 7 pairs for the judge" in text


def test_an_older_sample_directory_resumes(inputs, tmp_path):
    """Sample directories written before chunk_size left the settings still name it: they resume, as label's do."""
    from test_critique import ScriptedModel

    from rlaif.sample import SampleConfig
    from rlaif.sample import run as sample

    config = SampleConfig(prompts=str(inputs["root"] / "prompts.jsonl"), out=str(tmp_path), n=2)
    sample(config, complete=ScriptedModel())
    saved = tmp_path / "sample" / "config.yaml"
    saved.write_text(saved.read_text() + "chunk_size: 64\n")
    (tmp_path / "sample" / "candidates.jsonl").write_text("")
    assert sample(config, complete=ScriptedModel())["summary"] == "read 7 prompts, used 7"
