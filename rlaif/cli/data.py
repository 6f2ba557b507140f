"""The data stages: `rlaif critique`, `sample`, `label`, `score` and `rankings import` / `export`; each writes JSONL
rows."""

from __future__ import annotations

import os

import click

from rlaif.cli import _Group, cli, out, recipe_option, shown, stage_config

# --------------------------------------------------------------------------------------------------------------------
# rlaif critique


# The engine flags of the generation stages (rlaif.engines), in this order in their help
ENGINE_OPTIONS = [
    click.option("--engine", type=click.Choice(["rlaif", "vllm", "openai"]),
                 help="Where the replies are generated: rlaif (the model, here), vllm (vLLM in this process, on a "
                      "GPU) or openai (an OpenAI-compatible server: vllm serve, SGLang, llama.cpp, transformers serve; "
                      "-m is then the name the server serves).  [default: rlaif]"),
    click.option("--base-url", "base_url", multiple=True, metavar="URL",
                 help="With --engine openai: the server's API address, e.g. http://127.0.0.1:8000/v1. Repeat it to "
                      "share the requests among several servers (each request goes to the least busy)."),
    click.option("--api-key-env", metavar="VAR", help="With --engine openai: the environment variable holding the "
                 "API key, sent as a Bearer token, never printed or saved (unset OPENAI_API_KEY: no key is sent, as "
                 "local servers need none).  [default: OPENAI_API_KEY]"),
    click.option("--concurrency", type=int, help="With --engine openai: requests in flight at once, over all "
                 "servers; each reply is written as it comes back, so a rerun sends only what is missing.  "
                 "[default: 8]"),
]


def engine_options(command, options=ENGINE_OPTIONS):
    """Add ENGINE_OPTIONS to a command, as a stack of @click.option decorators would."""
    for option in reversed(options):
        command = option(command)
    return command


def label_engine_options(command):
    """The engine flags of the labeling commands (`rlaif label`, `rlaif eval labeler`): rlaif or openai."""
    engine = click.option("--engine", type=click.Choice(["rlaif", "vllm", "openai"]),
                          help="Where the labeler runs: rlaif (here), vllm (vLLM in this process, on a GPU) or openai "
                               "(an OpenAI-compatible server that sends top_logprobs: vllm serve, SGLang, llama.cpp; "
                               "--labeler is then the name it serves; mode compare without chain of thought).  "
                               "[default: rlaif]")
    concurrency = click.option("--concurrency", type=int, help="With --engine openai: requests in flight at once, "
                               "over all servers: at most a batch's (--batch-size pairs x principles x orders), so "
                               "raise --batch-size with it. Labels are written per batch; a rerun asks again the "
                               "batch a kill cut short.  [default: 8]")
    return engine_options(command, [engine, *ENGINE_OPTIONS[1:3], concurrency])


@cli.command()
@click.option("--prompts", help="Prompt file: JSONL, CSV or TSV (a prompt column), plain text (one per line, no "
                                "header) or hh-rlhf transcripts.")
@click.option("--out", help="Run directory; writes OUT/critique/. Rerun the same command to resume.  [default: runs/critique]")
@click.option("-c", "--constitution", help="Constitution name or path.  [default: default]")
@click.option("-m", "--model", help="Model spec.  [default: smollm2-135m-instruct]")
@click.option("--rounds", type=int, help="Critique/revision rounds per prompt.  [default: the constitution's]")
@click.option("--few-shot/--no-few-shot", default=None, help="Show the constitution's examples first.  [default: on]")
@click.option("--max-new-tokens", type=int, help="Length limit of each reply.  [default: 200]")
@click.option("-t", "--temperature", type=float, help="Sampling temperature, 0 for greedy.  [default: 0.7]")
@click.option("--top-p", type=float, help="Nucleus sampling threshold.  [default: 0.95]")
@click.option("--seed", type=int, help="Generation seed.  [default: 0]")
@click.option("--retry/--no-retry", "retry_flagged", default=None,
              help="Regenerate empty, looping or unchanged replies once.  [default: on]")
@click.option("--sft-every-revision", is_flag=True, default=None, help="One SFT example per revision, not only the final.")
@click.option("--sft-include-flagged", is_flag=True, default=None, help="Keep prompts whose final revision is flagged.")
@click.option("--prefs", is_flag=True, default=None, help="Also write prefs.jsonl: final revision over first answer.")
@click.option("--batch-size", type=int, help="Conversations per forward pass.  [default: 16]")
@click.option("--chunk-size", type=int, help="Prompts taken through the rounds together, their keys and values kept "
              "from turn to turn (every finished turn is saved: a rerun resumes at the next).  [default: 64]")
@click.option("--kv-memory-gb", type=float,
              help="Keys/values kept between turns so history is not recomputed; 0 turns it off.  [default: 2]")
@click.option("--device", help="cpu, cuda, cuda:1, ...  [default: a GPU if there is one]")
@engine_options
@recipe_option
def critique(config_file, base_url, **flags) -> None:
    """Critique and revise answers under the constitution's principles; write SFT data.

    For each prompt the model answers, then for each round critiques its latest answer under a principle drawn
    from the constitution and revises it. Writes OUT/critique/revisions.jsonl (every trace), sft.jsonl (TRL
    conversational format, the final revisions) and, with --prefs, prefs.jsonl; turns.jsonl keeps every finished
    turn, so a killed run resumes each conversation where it stopped. Replies that come back empty,
    looping, cut off or unchanged are flagged (all but the cut-off ones retried once); flagged rows are kept in
    revisions.jsonl.

    \b
    Examples:
      rlaif critique --prompts examples/prompts/red-team.jsonl --out runs/x
      rlaif critique --prompts prompts.csv -c harmless --rounds 2 -t 0 --out runs/y --prefs

    \b
    On a server (`vllm serve Qwen/Qwen2.5-7B-Instruct` running; see the README's "Inference servers"):
      rlaif critique --prompts examples/prompts/red-team.jsonl --engine openai \\
          --base-url http://127.0.0.1:8000/v1 -m Qwen/Qwen2.5-7B-Instruct --concurrency 32 --out runs/z
    """
    from rlaif import critique as stage

    flags.update(base_url=list(base_url) or None)
    config = stage_config(stage.CritiqueConfig, config_file, flags)
    if not config.prompts:
        raise click.UsageError("--prompts is required (or `prompts:` in --config)")
    counts = stage.run(config, progress=True)
    directory = f"{config.out}/critique"
    if os.path.isfile(f"{directory}/revisions.jsonl"):
        _show_trace(next(stage.read_jsonl(f"{directory}/revisions.jsonl"), None))
    out.print(f"[green]✓[/green] {counts['rows']} prompts → {shown(directory)}/revisions.jsonl; "
              f"{counts['sft_rows']} SFT rows, {counts['flagged_rows']} flagged ({shown(counts['summary'])})",
              soft_wrap=True)


def _show_trace(row: dict | None) -> None:
    """Print one critique trace, so the first look at a run needs no jq. Every field is model or file text."""
    if row is None:
        return
    from rich.panel import Panel

    parts = [f"[bold]Prompt[/bold]: {shown(row['prompt'][-1]['content'])}", f"[bold]Answer[/bold]: {shown(row['initial'])}"]
    for r in row["rounds"]:
        parts += [f"[bold]Critique[/bold] under [cyan]{shown(r['principle'])}[/cyan]: {shown(r['critique'])}",
                  f"[bold]Revision[/bold]: {shown(r['revision'])}"]
    flags = f" [yellow]flags: {shown(', '.join(row['flags']))}[/yellow]" if row["flags"] else ""
    out.print(Panel("\n\n".join(parts), title=f"{shown(row['id'])}{flags}", title_align="left"))


# --------------------------------------------------------------------------------------------------------------------
# rlaif sample / label / score


@cli.command()
@click.option("--prompts", type=click.Path(), help="Prompt file: JSONL, CSV, text or hh-rlhf transcripts.")
@click.option("--out", help="Run directory; writes OUT/sample/candidates.jsonl.  [default: runs/sample]")
@click.option("-m", "--model", help="The policy to sample from.  [default: smollm2-135m-instruct]")
@click.option("-n", "--n", type=int, help="Responses per prompt.  [default: 2]")
@click.option("--max-new-tokens", type=int, help="Length limit of each response.  [default: 200]")
@click.option("-t", "--temperature", type=float, help="Sampling temperature.  [default: 0.9]")
@click.option("--top-p", type=float, help="Nucleus sampling threshold.  [default: 0.95]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--batch-size", type=int, help="Sequences per forward pass; each batch's rows are written as it "
              "finishes (a rerun resumes after the last).  [default: 16]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@engine_options
@click.option("--contrastive", is_flag=True, default=None,
              help="RLCD: per prompt, one reply under a principle's follows system prompt (chosen) and one under its "
                   "violates prompt (rejected), written as preference rows to OUT/sample/preferences.jsonl.")
@click.option("-c", "--constitution", help="With --contrastive: the principles and their system prompts, a shipped "
              "name or a path.  [default: default]")
@recipe_option
def sample(config_file, base_url, **flags) -> None:
    """Sample K responses per prompt from a policy: the candidates `rlaif label` compares.

    With --contrastive (RLCD), sample a labelled pair per prompt instead: one reply under a principle's "follows"
    system prompt and one under its "violates" prompt, the first chosen with p_chosen = the constitution's
    label.contrastive_p. `rlaif reward` and `rlaif dpo` read them directly.

    \b
    Examples:
      rlaif sample --prompts examples/prompts/red-team.jsonl --n 2 --out runs/x
      rlaif sample -m runs/x/sft --prompts prompts.jsonl --n 4 -t 1.0 --out runs/x
      rlaif sample --prompts examples/prompts/red-team.jsonl --contrastive -c harmless --out runs/rlcd

    \b
    On two servers (`vllm serve Qwen/Qwen2.5-7B-Instruct` on gpu1 and gpu2; see the README's "Inference servers"):
      rlaif sample -m Qwen/Qwen2.5-7B-Instruct --prompts prompts.jsonl --n 4 --engine openai \\
          --base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1 --out runs/x
    """
    from rlaif import sample as stage

    flags.update(base_url=list(base_url) or None)
    config = stage_config(stage.SampleConfig, config_file, flags)
    if not config.prompts:
        raise click.UsageError("--prompts is required (or `prompts:` in --config)")
    counts = stage.run(config, progress=True)
    if config.contrastive:
        noun = "pair" if counts["used"] == 1 else "pairs"
        out.print(f"[green]✓[/green] {counts['used']} contrastive {noun} → "
                  f"{shown(config.out)}/sample/preferences.jsonl ({shown(counts['summary'])})", soft_wrap=True)
        return
    out.print(f"[green]✓[/green] {counts['used']} prompts x {config.n} → "
              f"{shown(config.out)}/sample/candidates.jsonl ({shown(counts['summary'])})", soft_wrap=True)


@cli.command()
@click.option("--candidates", type=click.Path(),
              help="candidates.jsonl (rlaif sample), or preference rows (id, prompt, chosen, rejected) to relabel.")
@click.option("--out", help="Run directory; writes OUT/label/preferences.jsonl.  [default: runs/label]")
@click.option("-c", "--constitution", help="Shipped constitution name or a path.  [default: default]")
@click.option("--labeler", help="The labeling model.  [default: smollm2-135m-instruct]")
@click.option("--mode", type=click.Choice(["compare", "contrast", "score"]),
              help="compare: ask which reply better follows a principle, (A) or (B); contrast: sigmoid of the "
                   "difference of the replies' likelihood contrasts, log p(reply | follows prompt) - log p(reply | "
                   "violates prompt); score: sigmoid of the difference of their expected 1-10 scores.  "
                   "[default: compare]")
@click.option("-k", "--principles", "principles_per_comparison",
              help="Principles averaged per pair: a number or 'all'.  [default: the constitution's label setting]")
@click.option("--both-orders/--one-order", default=None,
              help="Score (A, B) and (B, A) and average.  [default: the constitution's setting]")
@click.option("--cot/--no-cot", "chain_of_thought", default=None,
              help="Write a rationale before scoring; probabilities clamped.  [default: the constitution's setting]")
@click.option("--few-shot/--no-few-shot", default=None, help="Show the constitution's label examples first.  [default: on]")
@click.option("--max-new-tokens", type=int, help="Rationale length limit (--cot).  [default: 128]")
@click.option("--min-margin", type=float, help="Flag labels with p_chosen < 0.5 + this as low_confidence.  [default: 0.05]")
@click.option("--score-temperature", type=float, help="--mode score: P(first) = sigmoid((s_first - s_second) / "
              "this), in score points.  [default: 1]")
@click.option("--drop-flagged", is_flag=True, default=None,
              help="Write low-confidence and inconsistent pairs to dropped.jsonl instead.")
@click.option("--batch-size", type=int, help="Pairs per batch, written as it finishes.  [default: 8]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@label_engine_options
@recipe_option
def label(config_file, base_url, **flags) -> None:
    """Label pairs of responses with AI feedback: soft preferences under the constitution's principles.

    Every pair of a prompt's responses is shown to the labeler as a multiple-choice question under sampled
    principles; the label is the probability of option (A) against (B), scored in both orders and averaged.
    Writes OUT/label/preferences.jsonl (TRL's preference format plus p_chosen, per-order and per-principle
    probabilities, and flags for inconsistent or low-confidence labels). --mode contrast and --mode score ask no
    question and so have no position bias: each reply is scored alone, by its likelihood under a principle's
    "follows" system prompt against its "violates" prompt, or by its expected 1-10 score; rows keep the evidence.
    The contrast is a sum over the reply's tokens, so a per-token lean grows with length: check its
    agreement against "prefer the longer reply" with `rlaif eval labeler` before trusting it.

    \b
    Examples:
      rlaif label --candidates runs/x/sample/candidates.jsonl --out runs/x
      rlaif label --candidates runs/x/sample/candidates.jsonl -k 4 --cot --out runs/x-cot
      rlaif label --candidates runs/x/sample/candidates.jsonl --mode contrast -k 2 --out runs/x-contrast
      rlaif label --candidates runs/x/sample/candidates.jsonl --out runs/x \\
        --engine openai --base-url http://127.0.0.1:8080/v1 --labeler Qwen/Qwen2.5-7B-Instruct
    """
    from rlaif import label as stage

    flags.update(base_url=list(base_url) or None)
    config = stage_config(stage.LabelConfig, config_file, flags)
    if not config.candidates:
        raise click.UsageError("--candidates is required (or `candidates:` in --config)")
    counts = stage.run(config, progress=True)
    noun = "pair" if counts["labeled"] == 1 else "pairs"
    out.print(f"[green]✓[/green] {counts['labeled']} {noun} labeled → {shown(config.out)}/label/preferences.jsonl; "
              f"{counts['inconsistent']} inconsistent, {counts['low_confidence']} low confidence, "
              f"{counts['dropped']} dropped ({shown(counts['summary'])})", soft_wrap=True)


@cli.command()
@click.option("--candidates", type=click.Path(), help="candidates.jsonl (rlaif sample): every response is scored.")
@click.option("--out", help="Run directory; writes OUT/score/scores.jsonl.  [default: runs/score]")
@click.option("-c", "--constitution", help="Shipped constitution name or a path.  [default: default]")
@click.option("--labeler", help="The scoring model.  [default: smollm2-135m-instruct]")
@click.option("--batch-size", type=int, help="Rows per batch.  [default: 8]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@click.option("--engine", type=click.Choice(["rlaif", "vllm"]),
              help="Where the scorer runs: rlaif (here) or vllm (vLLM in this process, on a GPU).  [default: rlaif]")
@recipe_option
def score(config_file, **flags) -> None:
    """Direct RLAIF: rate each response from 1 to 10 under the constitution.

    The score is the expected value over the labeler's probabilities of "1" to "10" (no text is generated), and
    the reward is that score mapped to [-1, 1]. The same scorer is a reward function for PPO.

    \b
    Example:
      rlaif score --candidates runs/x/sample/candidates.jsonl --out runs/x
    """
    from rlaif import score as stage

    config = stage_config(stage.ScoreConfig, config_file, flags)
    if not config.candidates:
        raise click.UsageError("--candidates is required (or `candidates:` in --config)")
    counts = stage.run(config, progress=True)
    out.print(f"[green]✓[/green] {counts['responses']} responses scored → {shown(config.out)}/score/scores.jsonl "
              f"({shown(counts['summary'])})", soft_wrap=True)


# --------------------------------------------------------------------------------------------------------------------
# rlaif rankings import


@cli.group(cls=_Group)
def rankings() -> None:
    """Choose the pairs people should rank, and bring their rankings in as preference pairs (docs/humans.md)."""


@rankings.command(name="import")
@click.argument("rankings_file", metavar="FILE", type=click.Path())
@click.option("--out", "out_path", required=True,
              help="Where the preference rows go (a .jsonl file, written whole; not FILE itself).")
@click.option("--ties", type=click.Choice(["skip", "half", "error"]), default="skip", show_default=True,
              help="Tied responses: left out (counted), a pair labelled 0.5, or an error.")
@click.option("--annotator", help="Annotator id for rows that name none.")
@click.option("--skip-empty", is_flag=True, help="Leave out pairs with an empty response instead of stopping.")
def rankings_import(rankings_file, out_path: str, ties: str, annotator: str | None, skip_empty: bool) -> None:
    """Turn rankings of K responses into every pair they imply, labeled source=human.

    \b
    FILE is JSONL, CSV or TSV, one of:
      {"prompt": ..., "responses": [...], "ranks": [2, 1, 3]}     1 = best; or "scores" (higher is better)
      {"prompt": ..., "chosen": ..., "rejected": ...}             pairs
      {"chosen": "\\n\\nHuman: ...", "rejected": "..."}             hh-rlhf transcripts
      CSV: prompt,response,rank (or score), one line per response; or prompt,chosen,rejected
    optionally with "id", "annotator" and "weight". CSV column names may be in any case, other
    columns are ignored, and the delimiter (, ; or tab) is taken from the header line.
    Rows with "p_chosen" (labels: `rlaif label`'s, an earlier import's) are kept as they are,
    never made hard human labels. Every row is checked before anything is written.

    \b
    People's answers to the tasks of `rlaif rankings export` are read too, one pair per
    annotator and task (skips left out and counted), with the seconds each took:
      TASKS/rankings.jsonl          the answers of `rlaif rank serve`
      a Label Studio JSON export    of a project that imported TASKS/label-studio.json

    \b
    Example:
      rlaif rankings import team_rankings.jsonl --out runs/x/human.jsonl
    """
    from rlaif import rankings as stage

    counts = stage.run(stage.ImportConfig(rankings=rankings_file, out=out_path, ties=ties, annotator=annotator,
                                          skip_empty=skip_empty))
    extra = f", {counts['ties']} tie{'s' if counts['ties'] > 1 else ''} labelled 0.5" if counts["ties"] else ""
    noun = "pair" if counts["pairs"] == 1 else "pairs"
    out.print(f"[green]✓[/green] {counts['pairs']} {noun}{extra} → {shown(out_path)} ({shown(counts['summary'])})",
              soft_wrap=True)


# --------------------------------------------------------------------------------------------------------------------
# rlaif rankings export


@rankings.command(name="export")
@click.argument("preference_files", metavar="PREFS.jsonl...", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", required=True,
              help="Directory for tasks.jsonl, label-studio.json, label-studio.xml, guidelines.md and README.txt.")
@click.option("--budget", type=int, default=200, show_default=True,
              help="Pairs to export (all of them when fewer are left).")
@click.option("--random-share", type=float, default=0.2, show_default=True,
              help="Share of the budget drawn uniformly at random, to measure the AI's agreement with people "
                   "without bias.")
@click.option("--overlap", type=int, default=2, show_default=True,
              help="Annotators per task on the overlap share (inter-annotator agreement).")
@click.option("--overlap-share", type=float, default=0.2, show_default=True,
              help="Share of the tasks that go to --overlap annotators; the others go to one.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the random share, the overlap tasks and which reply Label Studio shows as A.")
def rankings_export(preference_files, out_dir: str, budget: int, random_share: float, overlap: int,
                    overlap_share: float, seed: int) -> None:
    """Choose the pairs people should rank first, and write them for the rank page and Label Studio.

    \b
    Of the AI's labels (rows with source=human are left out), the budget goes to:
      inconsistent          the two orders pick different winners (consistent: false)
      principles_disagree   one principle prefers each reply (principle_p on both sides of 0.5)
      uncertain             p_chosen within 0.05 of 0.5, least certain first, principles taking turns
      stratified            what budget is left, the other pairs, principles taking turns
      random                --random-share of the budget, drawn first, uniformly from every pair
    People's agreement with the AI is measured on the random ones only: the others were chosen for its doubt.

    \b
    Then rank them in rlaif's page, or in Label Studio (OUT/README.txt says how):
      rlaif rank serve OUT
      rlaif rankings import OUT/rankings.jsonl --out runs/x/human.jsonl
      rlaif rankings import label-studio-export.json --out runs/x/human.jsonl

    \b
    Example:
      rlaif rankings export runs/x/label/preferences.jsonl --budget 200 --out tasks/
    """
    from rich.table import Table

    from rlaif import rank_export as stage

    counts = stage.run(stage.ExportConfig(preferences=list(preference_files), out=out_dir, budget=budget,
                                          random_share=random_share, overlap=overlap, overlap_share=overlap_share,
                                          seed=seed))
    table = Table("why", "principle", "tasks")
    for (why, principle), n in sorted(counts["table"].items(), key=lambda item: (stage.WHY.index(item[0][0]),
                                                                                   str(item[0][1]))):
        table.add_row(why, shown(principle if principle is not None else "-"), str(n))
    out.print(table)
    short = (f"; the budget ({budget}) is more than the {counts['available']} pairs available: all exported"
             if budget > counts["available"] else "")
    out.print(f"[green]✓[/green] {counts['tasks']} tasks ({counts['random']} random, {counts['overlapping']} for "
              f"{overlap} annotators) → {shown(out_dir)}: tasks.jsonl, label-studio.json, label-studio.xml, guidelines.md, README.txt "
              f"({shown(counts['summary'])}){short}", soft_wrap=True)
