"""The `rlaif` command line. Each command is a thin shell over one stage module; the help text is the manual."""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _user_errors() -> tuple[type[Exception], ...]:
    from rlaif.constitution import ConstitutionError, TemplateError
    from rlaif.models import ModelError
    from rlaif.records import ConfigError, DataError

    return (ConstitutionError, TemplateError, ModelError, DataError, ConfigError)


class _Group(click.Group):
    """Turns the errors a user can fix into a clear message and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except _user_errors() as e:
            err.print(f"[bold red]error:[/bold red] {escape(str(e))}", soft_wrap=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rlaif")
def cli() -> None:
    """rlaif: align a language model to a written constitution.

    \b
    Start here:
      rlaif run examples/quickstart/recipe.yaml   the whole loop, one round, then runs/quickstart/report.html
      rlaif init my-project                   your own constitution, principles, prompts and recipe
      rlaif constitution show default         list the principles the default constitution applies
      rlaif generate -p "How do I boil an egg?"   talk to the embedded model

    The embedded model is SmolLM2-135M-Instruct (runs on a laptop CPU). Any command that takes --model also
    accepts a local Hugging Face directory, a .gguf file or a hub id. Run `rlaif COMMAND --help` for each
    command's guide.
    """


# --------------------------------------------------------------------------------------------------------------------
# rlaif init


@cli.command()
@click.argument("directory", metavar="DIR", type=click.Path())
@click.option("--name", help="The run's name (runs/NAME).  [default: the directory's name]")
def init(directory: str, name: str | None) -> None:
    """Start a project: an editable constitution, principles, prompts and a recipe, in a new directory.

    DIR gets the quickstart: recipe.yaml (one round of the whole loop on the embedded model), constitution.yaml
    (the default constitution) with its principle library copied into principles/, and the example red-team and
    helpful prompts (prompts.jsonl) and held-out prompts (eval.jsonl). Edit any of them, then run the recipe.

    \b
    Example:
      rlaif init my-project
      rlaif run my-project/recipe.yaml          # then open runs/my-project/report.html
    """
    from rlaif.workspace import init as make

    written = make(directory, name)
    for path in written:
        out.print(f"  {escape(str(path))}", soft_wrap=True)
    out.print(f"[green]✓[/green] next: rlaif run {escape(os.path.join(directory, 'recipe.yaml'))}", soft_wrap=True)


# --------------------------------------------------------------------------------------------------------------------
# rlaif constitution ...


@cli.group(cls=_Group)
def constitution() -> None:
    """Check and inspect constitutions and principle files.

    A constitution is a YAML file naming the principles to apply (from the library in principles/), few-shot
    examples, and the settings of the critique loop and the AI labeler. Refer to one by shipped name (default,
    harmless) or by path. The format is documented in docs/constitution.md.
    """


@constitution.command("check")
@click.argument("specs", nargs=-1, metavar="[NAME|PATH]...")
def constitution_check(specs: tuple[str, ...]) -> None:
    """Validate constitutions or principle files; exit 1 if any has a problem.

    Every problem is reported, each with file:line:column, the field and what was expected. With no
    argument, checks every shipped constitution.

    \b
    Examples:
      rlaif constitution check                     # all shipped constitutions
      rlaif constitution check default my.yaml     # a shipped one and your own
      rlaif constitution check principles/harmless.yaml
    """
    from collections import Counter

    from rlaif.constitution import ConstitutionError, load_constitution, shipped_names

    failed = 0
    for spec in specs or shipped_names():
        try:
            c = load_constitution(spec)
        except ConstitutionError as e:
            failed += 1
            err.print(f"[red]✗[/red] {escape(spec)}: {len(e.problems)} problem(s)")
            for problem in e.problems:
                err.print(f"  {problem}", markup=False, soft_wrap=True)
            continue
        families = ", ".join(f"{f} {n}" for f, n in Counter(p.family for p in c.principles).items())
        examples = (f", {len(c.critique_examples)} critique and {len(c.label_examples)} label examples"
                    if c.critique_examples or c.label_examples else "")
        out.print(f"[green]✓[/green] {escape(spec)}: {len(c.principles)} principles ({families}){examples}",
                  soft_wrap=True)
    sys.exit(1 if failed else 0)


@constitution.command("show")
@click.argument("spec", default="default", metavar="[NAME|PATH]")
@click.option("--full", is_flag=True, help="Print each principle's full texts instead of a table.")
def constitution_show(spec: str, full: bool) -> None:
    """Show the principles a constitution resolves to, after includes, pick/omit and overrides.

    \b
    Examples:
      rlaif constitution show                  # the default constitution
      rlaif constitution show harmless --full  # every request and question in full
    """
    from rlaif.constitution import load_constitution

    c = load_constitution(spec)
    out.print(f"[bold]{escape(c.name)}[/bold] {escape(c.version)}  [dim]{escape(str(c.path))}[/dim]")
    out.print(c.description.strip(), markup=False)
    if full:
        for p in c.principles:
            out.print(f"\n[bold]{p.id}[/bold]  [dim]{p.family} · weight {p.weight:g} · {escape(p.source)}[/dim]")
            out.print(f"  critique:   {p.critique_request}", markup=False)
            out.print(f"  revision:   {p.revision_request}", markup=False)
            out.print(f"  comparison: {p.comparison_question}", markup=False)
        return
    table = Table(show_lines=False)
    for column in ("id", "family", "weight", "comparison question"):
        table.add_column(column, overflow="fold")
    for p in c.principles:
        table.add_row(p.id, p.family, f"{p.weight:g}", Text(p.comparison_question))
    out.print(table)
    s, lab = c.critique, c.label
    out.print(f"critique: {s.rounds} rounds, {s.sampling} sampling, seed {s.seed}")
    out.print(f"label: {lab.principles_per_comparison} principle(s) per comparison, both orders {lab.both_orders}, "
              f"chain of thought {lab.chain_of_thought}, clamp {list(lab.clamp)}")


@constitution.command("diff")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--candidates", required=True, type=click.Path(),
              help="Pairs to relabel: candidates.jsonl from `rlaif sample`, or preference rows.")
@click.option("--labeler", help="The labeling model.  [default: smollm2-135m-instruct]")
@click.option("--limit", type=int,
              help="Pairs read (the first N); empty or identical replies are left out.  [default: 64]")
@click.option("--out", help="The JSON report.  [default: runs/constitution-diff.json]")
@click.option("--batch-size", type=int, help="Pairs per batch.  [default: 8]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
def constitution_diff(a: str, b: str, **flags) -> None:
    """What editing a constitution changes: relabel pairs under A and B, and see which labels flip and why.

    The same labeler labels the same pairs, both orders, under each constitution. Printed: the principles
    added, removed and edited from A to B; how many labels flip; for each principle drawn under B, its pairs and
    flips (edited or added principles that flip many labels are what the edit changed); the flipped pairs.
    A pair keeps its principle under both when that principle and the label settings are unchanged.

    \b
    Example:
      cp constitution/default.yaml mine.yaml     # edit a principle in mine.yaml, then:
      rlaif constitution diff default mine.yaml --candidates runs/quickstart/round-1/sample/candidates.jsonl
    """
    from rlaif import diff

    config = stage_config(diff.DiffConfig, None, {**flags, "a": a, "b": b})
    report = diff.run(config, progress=True)
    diff.print_report(report, out)
    out.print(f"[green]✓[/green] report → {escape(config.out)}", soft_wrap=True)


# --------------------------------------------------------------------------------------------------------------------
# rlaif generate


@cli.command()
@click.option("-m", "--model", default="smollm2-135m-instruct", show_default=True,
              help="Embedded model name, local directory, .gguf file or hub id.")
@click.option("-p", "--prompt", "prompts", multiple=True, required=True,
              help="A user message. Repeat to generate several replies in one batch.")
@click.option("-s", "--system", default=None, help="An optional system message before each prompt.")
@click.option("--max-new-tokens", default=256, show_default=True, help="Reply length limit in tokens.")
@click.option("-t", "--temperature", default=0.0, show_default=True, help="0 for greedy decoding.")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling threshold.")
@click.option("--seed", default=None, type=int, help="Seed for sampling (temperature > 0).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: a GPU if there is one).")
def generate(prompts, model, system, max_new_tokens, temperature, top_p, seed, device) -> None:
    """Generate replies from a model: a quick way to see what it says.

    \b
    Examples:
      rlaif generate -p "Give me three tips for sleeping better."
      rlaif generate -m runs/x/sft -p "Hi" -p "How do I pick a lock?" -t 0.7 --seed 1
    """
    from rlaif.generate import GenerationConfig
    from rlaif.generate import generate as run
    from rlaif.models import load_model

    config = stage_config(GenerationConfig, None, {"max_new_tokens": max_new_tokens, "temperature": temperature,
                                                   "top_p": top_p, "seed": seed})
    lm, tokenizer = load_model(model, device=device)
    head = [{"role": "system", "content": system}] if system else []
    conversations = [head + [{"role": "user", "content": p}] for p in prompts]
    for prompt, reply in zip(prompts, run(lm, tokenizer, conversations, config, progress=len(prompts) > 1)):
        if len(prompts) > 1:
            out.print(f"[bold]> {escape(prompt)}[/bold]")
        out.print(reply.text, markup=False)
        if reply.finish_reason == "length":
            err.print(f"[dim](stopped at --max-new-tokens {max_new_tokens})[/dim]")


# --------------------------------------------------------------------------------------------------------------------
# Stage configs: dataclass defaults < recipe file (--config) < flags given on the command line


def stage_config(cls, config_file: str | None, flags: dict):
    """Build a stage's dataclass config. Unknown recipe keys are errors naming the file, line and key; every value,
    from the file or a flag, is checked against its field (pipeline.check_settings: a number must be finite) and by
    the stage's own checks; errors name the file and line, or the flag."""
    import dataclasses

    from rlaif.pipeline import check_settings
    from rlaif.records import DataError, parse_yaml, read_text

    values: dict = {}
    if config_file:
        import yaml

        path = click.format_filename(config_file)
        text = read_text(config_file)
        try:
            recipe, node = parse_yaml(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise DataError(path, mark.line + 1 if mark else None, None, f"YAML syntax error: {e}") from None
        if recipe is not None and not isinstance(recipe, dict):
            raise DataError(path, 1, None, "expected a mapping of setting: value")
        fields = {f.name for f in dataclasses.fields(cls)}
        lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if node is not None else {}
        for key, value in (recipe or {}).items():
            if key not in fields:
                raise DataError(path, lines.get(key), str(key), f"unknown setting; expected one of: {', '.join(sorted(fields))}")
            values[key] = value
        values = check_settings(cls, values, lambda key: (path, lines.get(key), key))
    given = {k: v for k, v in flags.items() if v is not None}
    values.update(check_settings(cls, given, lambda key: ("command line", None, _flag(key))))
    try:
        return cls(**values)
    except DataError as e:  # the stage's own range check: name the flag or the file's line that gave the value
        if e.field in given:
            raise DataError("command line", None, _flag(e.field), e.message) from None
        if e.field in values:
            raise DataError(path, lines.get(e.field), e.field, e.message) from None
        raise


def _flag(name: str) -> str:
    """The command-line spelling of a setting (`learning_rate` -> `--learning-rate`), for errors."""
    context = click.get_current_context(silent=True)
    for param in context.command.params if context else ():
        if param.name == name and param.opts:
            return max(param.opts, key=len)
    return name


recipe_option = click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                             help="A YAML file of these settings (by their long names, with _); flags override it.")


# --------------------------------------------------------------------------------------------------------------------
# rlaif critique


@cli.command()
@click.option("--prompts", help="Prompt file: JSONL, CSV, plain text (one per line) or hh-rlhf transcripts.")
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
@recipe_option
def critique(config_file, **flags) -> None:
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
    """
    from rlaif import critique as stage

    config = stage_config(stage.CritiqueConfig, config_file, flags)
    if not config.prompts:
        raise click.UsageError("--prompts is required (or `prompts:` in --config)")
    counts = stage.run(config, progress=True)
    directory = f"{config.out}/critique"
    if os.path.isfile(f"{directory}/revisions.jsonl"):
        _show_trace(next(stage.read_jsonl(f"{directory}/revisions.jsonl"), None))
    out.print(f"[green]✓[/green] {counts['rows']} prompts → {escape(directory)}/revisions.jsonl; "
              f"{counts['sft_rows']} SFT rows, {counts['flagged_rows']} flagged", soft_wrap=True)


def _show_trace(row: dict | None) -> None:
    """Print one critique trace, so the first look at a run needs no jq."""
    if row is None:
        return
    from rich.panel import Panel

    parts = [f"[bold]Prompt[/bold]: {escape(row['prompt'][-1]['content'])}", f"[bold]Answer[/bold]: {escape(row['initial'])}"]
    for r in row["rounds"]:
        parts += [f"[bold]Critique[/bold] under [cyan]{r['principle']}[/cyan]: {escape(r['critique'])}",
                  f"[bold]Revision[/bold]: {escape(r['revision'])}"]
    flags = f" [yellow]flags: {', '.join(row['flags'])}[/yellow]" if row["flags"] else ""
    out.print(Panel("\n\n".join(parts), title=f"{escape(row['id'])}{flags}", title_align="left"))


# --------------------------------------------------------------------------------------------------------------------
# rlaif sft


@cli.command()
@click.option("--data", help="sft.jsonl: rows of `messages` ending with the assistant's reply (rlaif critique writes it).")
@click.option("--out", help="Where the fine-tuned model goes; checkpoints under OUT/checkpoints/.  [default: runs/sft]")
@click.option("-m", "--model", help="The model to fine-tune.  [default: smollm2-135m-instruct]")
@click.option("--lora/--full", default=None, help="Train a LoRA adapter (merged at the end) or every weight.  [default: full]")
@click.option("--lora-r", type=int, help="LoRA rank.  [default: 16]")
@click.option("--learning-rate", type=float, help="[default: 2e-4 with LoRA, 2e-5 without]")
@click.option("--epochs", type=float, help="Passes over the data.  [default: 1]")
@click.option("--max-steps", type=int, help="Stop after N optimizer updates (overrides --epochs).")
@click.option("--batch-size", type=int, help="Examples per step.  [default: 8]")
@click.option("--grad-accum", type=int, help="Steps per optimizer update.  [default: 1]")
@click.option("--max-length", type=int, help="Tokens per example.  [default: 1024]")
@click.option("--save-steps", type=int, help="Checkpoint every N updates.  [default: 50]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@recipe_option
def sft(config_file, **flags) -> None:
    """Fine-tune a model on SFT data (TRL SFTTrainer), loss on the assistant's reply only.

    OUT becomes a model directory (safetensors) that any command takes as --model. Kill it any time: the same
    command resumes from the latest checkpoint.

    \b
    Examples:
      rlaif sft --data runs/x/critique/sft.jsonl --out runs/x/sft
      rlaif sft --data runs/x/critique/sft.jsonl --out runs/x/sft-lora --lora --max-steps 200
    """
    from rlaif import sft as stage

    config = stage_config(stage.SFTConfig, config_file, flags)
    if not config.data:
        raise click.UsageError("--data is required (or `data:` in --config)")
    metrics = stage.run(config)
    out.print(f"[green]✓[/green] {metrics['steps']} steps on {metrics['examples']} examples, loss "
              f"{metrics['first_loss']:.3f} → {metrics['last_loss']:.3f}; model in {escape(config.out)}"
              f"{_data_summary(metrics)}", soft_wrap=True)


def _data_summary(metrics: dict) -> str:
    """What a training stage read, used and left out, for its closing line."""
    return f" ({escape(metrics['summary'])})" if "summary" in metrics else ""


# --------------------------------------------------------------------------------------------------------------------
# rlaif sample / label


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
@click.option("--engine", type=click.Choice(["rlaif", "vllm"]), help="vllm: sample with vLLM where installed.  "
              "[default: rlaif]")
@recipe_option
def sample(config_file, **flags) -> None:
    """Sample K responses per prompt from a policy: the candidates `rlaif label` compares.

    \b
    Examples:
      rlaif sample --prompts examples/prompts/red-team.jsonl --n 2 --out runs/x
      rlaif sample -m runs/x/sft --prompts prompts.jsonl --n 4 -t 1.0 --out runs/x
    """
    from rlaif import sample as stage

    config = stage_config(stage.SampleConfig, config_file, flags)
    if not config.prompts:
        raise click.UsageError("--prompts is required (or `prompts:` in --config)")
    counts = stage.run(config, progress=True)
    out.print(f"[green]✓[/green] {counts['prompts']} prompts x {config.n} → "
              f"{escape(config.out)}/sample/candidates.jsonl", soft_wrap=True)


@cli.command()
@click.option("--candidates", type=click.Path(),
              help="candidates.jsonl (rlaif sample), or preference rows (prompt, chosen, rejected) to relabel.")
@click.option("--out", help="Run directory; writes OUT/label/preferences.jsonl.  [default: runs/label]")
@click.option("-c", "--constitution", help="Shipped constitution name or a path.  [default: default]")
@click.option("--labeler", help="The labeling model.  [default: smollm2-135m-instruct]")
@click.option("-k", "--principles", "principles_per_comparison",
              help="Principles averaged per pair: a number or 'all'.  [default: the constitution's label setting]")
@click.option("--both-orders/--one-order", default=None,
              help="Score (A, B) and (B, A) and average.  [default: the constitution's setting]")
@click.option("--cot/--no-cot", "chain_of_thought", default=None,
              help="Write a rationale before scoring; probabilities clamped.  [default: the constitution's setting]")
@click.option("--few-shot/--no-few-shot", default=None, help="Show the constitution's label examples first.  [default: on]")
@click.option("--max-new-tokens", type=int, help="Rationale length limit (--cot).  [default: 128]")
@click.option("--min-margin", type=float, help="Flag labels with p_chosen < 0.5 + this as low_confidence.  [default: 0.05]")
@click.option("--drop-flagged", is_flag=True, default=None,
              help="Write low-confidence and inconsistent pairs to dropped.jsonl instead.")
@click.option("--batch-size", type=int, help="Pairs per batch, written as it finishes.  [default: 8]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@recipe_option
def label(config_file, **flags) -> None:
    """Label pairs of responses with AI feedback: soft preferences under the constitution's principles.

    Every pair of a prompt's responses is shown to the labeler as a multiple-choice question under sampled
    principles; the label is the probability of option (A) against (B), scored in both orders and averaged.
    Writes OUT/label/preferences.jsonl (TRL's preference format plus p_chosen, per-order and per-principle
    probabilities, and flags for inconsistent or low-confidence labels).

    \b
    Examples:
      rlaif label --candidates runs/x/sample/candidates.jsonl --out runs/x
      rlaif label --candidates runs/x/sample/candidates.jsonl -k 4 --cot --out runs/x-cot
    """
    from rlaif import label as stage

    config = stage_config(stage.LabelConfig, config_file, flags)
    if not config.candidates:
        raise click.UsageError("--candidates is required (or `candidates:` in --config)")
    counts = stage.run(config, progress=True)
    out.print(f"[green]✓[/green] {counts['labeled']} pairs labeled → {escape(config.out)}/label/preferences.jsonl; "
              f"{counts['inconsistent']} inconsistent, {counts['low_confidence']} low confidence, "
              f"{counts['dropped']} dropped ({escape(counts['summary'])})", soft_wrap=True)


@cli.command()
@click.option("--candidates", type=click.Path(), help="candidates.jsonl (rlaif sample): every response is scored.")
@click.option("--out", help="Run directory; writes OUT/score/scores.jsonl.  [default: runs/score]")
@click.option("-c", "--constitution", help="Shipped constitution name or a path.  [default: default]")
@click.option("--labeler", help="The scoring model.  [default: smollm2-135m-instruct]")
@click.option("--batch-size", type=int, help="Rows per batch.  [default: 8]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
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
    out.print(f"[green]✓[/green] {counts['responses']} responses scored → {escape(config.out)}/score/scores.jsonl "
              f"({escape(counts['summary'])})", soft_wrap=True)


# --------------------------------------------------------------------------------------------------------------------
# rlaif rankings / reward


@cli.group(cls=_Group)
def rankings() -> None:
    """Bring human rankings in as preference pairs (docs/data-contract.md)."""


@rankings.command(name="import")
@click.argument("rankings_file", metavar="FILE", type=click.Path())
@click.option("--out", "out_path", required=True, help="Where the preference rows go (JSONL, written whole).")
@click.option("--ties", type=click.Choice(["skip", "half", "error"]), default="skip", show_default=True,
              help="Tied responses: no pair, a pair labelled 0.5, or an error.")
@click.option("--annotator", help="Annotator id for rows that name none.")
@click.option("--skip-empty", is_flag=True, help="Leave out pairs with an empty response instead of stopping.")
def rankings_import(rankings_file, out_path: str, ties: str, annotator: str | None, skip_empty: bool) -> None:
    """Turn rankings of K responses into every pair they imply, labeled source=human.

    \b
    FILE is JSONL or CSV, one of:
      {"prompt": ..., "responses": [...], "ranks": [2, 1, 3]}     1 = best; or "scores" (higher is better)
      {"prompt": ..., "chosen": ..., "rejected": ...}             pairs
      {"chosen": "\\n\\nHuman: ...", "rejected": "..."}             hh-rlhf transcripts
      CSV: prompt,response,rank (or score), one line per response; or prompt,chosen,rejected
    optionally with "id" and "annotator". Every row is checked before anything is written.

    \b
    Example:
      rlaif rankings import team_rankings.jsonl --out runs/x/human.jsonl
    """
    from rlaif import rankings as stage

    counts = stage.run(stage.ImportConfig(rankings=rankings_file, out=out_path, ties=ties, annotator=annotator,
                                          skip_empty=skip_empty))
    extra = f", {counts['ties']} ties labelled 0.5" if counts["ties"] else ""
    out.print(f"[green]✓[/green] {counts['pairs']} pairs{extra} → {escape(out_path)} ({escape(counts['summary'])})",
              soft_wrap=True)


@cli.command()
@click.option("--data", multiple=True, metavar="FILE[:WEIGHT]",
              help="A preference file and its weight (default 1); repeat to mix sources. Label or critique output, "
                   "imported rankings, or any file `rankings import` reads.")
@click.option("--out", help="Where the reward model and metrics.json go.  [default: runs/rm]")
@click.option("-m", "--model", help="Backbone: any causal LM spec.  [default: smollm2-135m-instruct]")
@click.option("--eval-data", multiple=True, metavar="FILE", help="Held-out pairs (else --eval-fraction of the pairs).")
@click.option("--eval-fraction", type=float, help="Share of pairs held out.  [default: 0.1]")
@click.option("--human-overrides", is_flag=True, default=None,
              help="Where people and the AI pick different winners, keep only the human label.")
@click.option("--lora/--full", default=None, help="Train a LoRA adapter and the head, or every weight.  [default: full]")
@click.option("--learning-rate", type=float, help="[default: 1e-4 with LoRA, 1e-5 without]")
@click.option("--epochs", type=float, help="Passes over the data.  [default: 1]")
@click.option("--max-steps", type=int, help="Stop after N optimizer updates (overrides --epochs).")
@click.option("--batch-size", type=int, help="Pairs per step.  [default: 8]")
@click.option("--grad-accum", type=int, help="Steps per optimizer update.  [default: 1]")
@click.option("--max-length", type=int, help="Tokens of prompt + response; longer pairs are left out.  [default: 1024]")
@click.option("--margin", type=float, help="Required reward gap toward the winner.  [default: 0]")
@click.option("--center-rewards", type=float, help="Penalty on the mean squared reward (e.g. 0.01).  [default: off]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@recipe_option
def reward(config_file, data, eval_data, **flags) -> None:
    """Train a reward model on AI labels, human rankings, or a weighted mix of both.

    Soft labels are used as they are: the loss is the Bradley-Terry cross-entropy against p = P(chosen is
    better), TRL's RewardTrainer loss at p = 1. The same pair from several files becomes one row (weighted mean
    label, provenance kept). metrics.json reports held-out accuracy, margin and calibration per source and overall,
    how far the reward follows response length, and where people and the AI disagree. Rerun to resume.

    \b
    Examples:
      rlaif reward --data runs/x/label/preferences.jsonl --out runs/x/rm
      rlaif reward --data runs/x/label/preferences.jsonl:1 --data runs/x/human.jsonl:2 --out runs/x/rm --lora
    """
    from rlaif import reward as stage

    flags.update(data=list(data) or None, eval_data=list(eval_data) or None)
    config = stage_config(stage.RewardConfig, config_file, flags)
    if not config.data:
        raise click.UsageError("--data is required (or `data:` in --config)")
    metrics = stage.run(config)
    train, held = metrics["train"], metrics["heldout"]
    out.print(f"[green]✓[/green] {train['steps']} steps on {train['pairs']} pairs, loss {train['first_loss']:.3f} → "
              f"{train['last_loss']:.3f}; model in {escape(config.out)}{_data_summary(metrics)}", soft_wrap=True)
    if held:
        table = Table("held-out", "pairs", "accuracy", "margin", "ECE", title="reward model")
        for name, m in held.items():
            if name != "length":
                fmt = lambda v: "-" if v is None else f"{v:.3f}"
                table.add_row(name, str(m["pairs"]), fmt(m["accuracy"]), fmt(m["mean_margin"]), fmt(m["ece"]))
        out.print(table)
        length = held["length"]
        if length["reward_length_correlation"] is not None:
            out.print(f"reward vs response length: r = {length['reward_length_correlation']:+.2f} "
                      f"(the longer response is the chosen one in {length['longer_wins_accuracy']:.0%} of pairs)")
    agreement = metrics["agreement"]
    if agreement["pairs_labeled_by_both"]:
        out.print(f"people and the AI agree on {agreement['agree']:g}/{agreement['pairs_labeled_by_both']} pairs "
                  f"labeled by both; the others are listed in metrics.json")


# --------------------------------------------------------------------------------------------------------------------
# rlaif ppo


@cli.command()
@click.option("--policy", help="The model to train: usually a run's sft/ directory.  [default: smollm2-135m-instruct]")
@click.option("--reward-model", multiple=True, metavar="DIR[:WEIGHT]",
              help="A reward model from `rlaif reward`, and its weight; repeat to sum several.")
@click.option("--reward-fn", multiple=True, metavar="MODULE:FUNCTION[:WEIGHT]",
              help="A Python reward f(prompts, responses) -> one number per response; repeatable.")
@click.option("--reward-score", metavar="MODEL[:WEIGHT]", help="A labeler's direct 1-10 score as a reward.")
@click.option("-c", "--constitution", help="The rubric of --reward-score.  [default: default]")
@click.option("--prompts", help="Training prompts: JSONL, CSV, text or hh-rlhf transcripts.")
@click.option("--eval-prompts", help="Held-out prompts, scored before, during (--eval-every) and after training.")
@click.option("--eval-every", type=int, help="Score the held-out prompts every N steps too; 0: before and after only.")
@click.option("--out", help="Where the policy, logs and checkpoints go. Rerun to resume.  [default: runs/ppo]")
@click.option("--steps", type=int, help="PPO updates; raise it and rerun to train on.  [default: 100]")
@click.option("--batch-size", type=int, help="Prompts per rollout, per process.  [default: 8]")
@click.option("--minibatches", type=int, help="Optimizer steps per PPO epoch.  [default: 1]")
@click.option("--micro-batch-size", type=int, help="Rows per forward/backward (gradients accumulate).")
@click.option("--ppo-epochs", type=int, help="Passes over each rollout.  [default: 4]")
@click.option("--max-new-tokens", type=int, help="Response length limit.  [default: 64]")
@click.option("-t", "--temperature", type=float, help="Sampling temperature (> 0).  [default: 0.7]")
@click.option("--missing-eos-penalty", type=float, help="Subtracted from the reward of responses cut off.")
@click.option("--learning-rate", type=float, help="[default: 1e-4 with LoRA, 1e-5 without]")
@click.option("--kl-coef", type=float, help="Beta, the KL penalty's weight (initial, if adaptive).  [default: 0.05]")
@click.option("--kl-target", type=float, help="Adaptive beta's target KL per response, nats.  [default: 6]")
@click.option("--fixed-kl", is_flag=True, default=False, help="Keep beta fixed at --kl-coef (no target).")
@click.option("--kl-estimator", type=click.Choice(["k1", "k2", "k3"]), help="Per-token KL estimate.  [default: k1]")
@click.option("--lora/--full", default=None, help="Train LoRA adapters (reference = adapter off) or every weight.")
@click.option("--shared-value-head/--value-model", default=None,
              help="Value as a head on the policy's own trunk (one forward and backward per minibatch, not two; "
                   "starts at zero) or a separate value model (from the reward model).  [default: value model]")
@click.option("--save-steps", type=int, help="Checkpoint every N steps.  [default: 10]")
@click.option("--log-with", help="Also log to an accelerate tracker (tensorboard, wandb, ...).")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@recipe_option
def ppo(config_file, reward_model, reward_fn, fixed_kl, **flags) -> None:
    """Reinforcement learning with PPO against a reward, with a KL penalty to the starting policy.

    Each step samples one response per prompt, scores it (reward models, a labeler's direct score, Python
    functions, or a weighted sum), subtracts beta times the KL to the frozen reference on every token, and runs
    clipped PPO epochs on the policy and a value model (initialised from the first reward model). The bar shows
    reward, KL and beta; metrics.jsonl has every diagnostic per step (kl, non_score_reward, clipfrac, approx_kl,
    entropy, explained_variance, losses, length, samples/s). Kill it at any time and rerun the same command: it
    resumes from the newest checkpoint. Guards stop the run, with a checkpoint, on NaN rewards or losses, a
    runaway KL or exploding probability ratios, and say what to try. Several devices: `accelerate launch -m rlaif ppo`.

    \b
    Examples:
      rlaif ppo --policy runs/x/sft --reward-model runs/x/rm --prompts prompts.jsonl --out runs/x/ppo
      rlaif ppo --policy runs/x/sft --reward-model runs/x/rm:1 --reward-score smollm2-135m-instruct:0.5 \\
                --prompts prompts.jsonl --lora --steps 200 --out runs/x/ppo
      accelerate launch --num_processes 2 -m rlaif ppo --config ppo.yaml
    """
    from rlaif.ppo import trainer as stage

    flags.update(reward_model=list(reward_model) or None, reward_fn=list(reward_fn) or None)
    config = stage_config(stage.PPOConfig, config_file, flags)
    if fixed_kl:
        config.kl_target = None
    if not config.prompts:
        raise click.UsageError("--prompts is required (or `prompts:` in --config)")
    try:
        metrics = stage.run(config)
    except stage.PPOStopped as e:
        err.print(f"[bold red]stopped:[/bold red] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch, one process reports
        return
    if metrics:
        out.print(f"[green]✓[/green] step {metrics['step']}: reward {metrics['score']:+.3f}, KL {metrics['kl']:.2f}, "
                  f"beta {metrics['beta']:.4f}; policy in {escape(config.out)}", soft_wrap=True)
    else:
        out.print(f"[green]✓[/green] already trained for {config.steps} steps: {escape(config.out)}", soft_wrap=True)


@cli.command()
@click.option("--data", multiple=True, metavar="FILE",
              help="Preference files (rlaif label, rankings import, hh-rlhf pairs); repeat to combine.")
@click.option("--policy", help="The model to train and the frozen reference: usually a run's sft/ directory.")
@click.option("--out", help="Where the policy and checkpoints go. Rerun to resume.  [default: runs/dpo]")
@click.option("--beta", type=float, help="Strength of the implicit KL penalty.  [default: 0.1]")
@click.option("--loss-type", help="TRL's DPO loss: sigmoid, robust (noisy labels), ipo, hinge, ...  [default: sigmoid]")
@click.option("--label-smoothing", help="Label error rate for the robust, exo_pair and aot losses (an error with the "
              "others), or auto: mean 1 - p_chosen with those, 0 with the others.  [default: auto]")
@click.option("--min-p-chosen", type=float, help="Leave out pairs no more confident than this.  [default: 0.5]")
@click.option("--lora/--full", default=None, help="Train LoRA adapters (merged at the end) or every weight.")
@click.option("--learning-rate", type=float, help="[default: 5e-5 with LoRA, 5e-7 without]")
@click.option("--epochs", type=float, help="[default: 1]")
@click.option("--max-steps", type=int, help="Overrides --epochs when > 0.")
@click.option("--batch-size", type=int, help="Pairs per device per step.  [default: 8]")
@click.option("--max-length", type=int, help="Prompt + reply tokens.  [default: 1024]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@recipe_option
def dpo(config_file, data, label_smoothing, **flags) -> None:
    """Direct preference optimisation on preference files (TRL DPOTrainer): PPO without a reward model.

    Each pair trains once toward its winner; ties and pairs no more confident than --min-p-chosen are left
    out. With --loss-type robust, soft labels set the assumed label error rate (--label-smoothing auto).
    In a recipe, `policy_trainer: dpo` trains on every round's labels and the human pairs instead of PPO.

    \b
    Example:
      rlaif dpo --data runs/x/round-1/label/preferences.jsonl --policy runs/x/round-1/sft --lora --out runs/x/dpo
    """
    from rlaif import dpo as stage

    if label_smoothing is not None and label_smoothing != "auto":
        try:
            label_smoothing = float(label_smoothing)
        except ValueError:
            raise click.BadParameter("expected auto or a number", param_hint="--label-smoothing") from None
    flags.update(data=list(data) or None, label_smoothing=label_smoothing)
    config = stage_config(stage.DPOConfig, config_file, flags)
    if not config.data:
        raise click.UsageError("--data is required (or `data:` in --config)")
    metrics = stage.run(config)
    out.print(f"[green]✓[/green] {metrics['steps']} steps on {metrics['pairs']} pairs, last loss "
              f"{metrics['last_loss']}; policy in {escape(config.out)}{_data_summary(metrics)}", soft_wrap=True)


@cli.command()
@click.option("--algorithm", type=click.Choice(["grpo", "rloo"]), help="[default: grpo]")
@click.option("--policy", help="The model to train and the KL reference: usually a run's sft/ directory.")
@click.option("--reward-model", multiple=True, metavar="DIR[:WEIGHT]",
              help="A reward model from `rlaif reward`, and its weight; repeat to sum several.")
@click.option("--prompts", help="Training prompts: JSONL, CSV, text or hh-rlhf transcripts.")
@click.option("--out", help="Where the policy, metrics and checkpoints go. Rerun to resume.  [default: runs/grpo]")
@click.option("--steps", type=int, help="Optimizer steps.  [default: 100]")
@click.option("--prompts-per-step", type=int, help="Prompts per step, per device.  [default: 4]")
@click.option("--group-size", type=int, help="Replies sampled per prompt, at least 2.  [default: 4]")
@click.option("--max-new-tokens", type=int, help="Reply length limit.  [default: 128]")
@click.option("-t", "--temperature", type=float, help="[default: 0.7]")
@click.option("--beta", type=float, help="Weight of the KL penalty to the starting policy.  [default: 0.05]")
@click.option("--lora/--full", default=None, help="Train LoRA adapters (merged at the end) or every weight.")
@click.option("--learning-rate", type=float, help="[default: 5e-5 with LoRA, 1e-6 without]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@recipe_option
def grpo(config_file, reward_model, **flags) -> None:
    """GRPO or RLOO against reward models (TRL's trainers): PPO without a value model.

    Each step samples a group of replies per prompt; a reply's advantage is its reward against its group's
    mean (GRPO) or the mean of the other replies (RLOO), with a KL penalty to the starting policy. metrics.jsonl
    uses PPO's names, so `rlaif report` plots it alike. In a recipe: `policy_trainer: grpo` (or rloo).

    \b
    Example:
      rlaif grpo --policy runs/x/round-1/sft --reward-model runs/x/round-1/reward --prompts prompts.jsonl --lora
    """
    from rlaif import grpo as stage

    flags.update(reward_model=list(reward_model) or None)
    config = stage_config(stage.GRPOConfig, config_file, flags)
    if not config.prompts:
        raise click.UsageError("--prompts is required (or `prompts:` in --config)")
    last = stage.run(config)
    reward = f", reward {last['reward']:+.3f}" if "reward" in last else ""
    out.print(f"[green]✓[/green] {config.algorithm}{reward}; policy in {escape(config.out)}{_data_summary(last)}",
              soft_wrap=True)


# --------------------------------------------------------------------------------------------------------------------
# rlaif run


def _parse_set(values: tuple[str, ...]) -> dict:
    import yaml

    overrides = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE, e.g. ppo.steps=20", param_hint="--set")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


@cli.command(name="run")
@click.argument("recipe_file", metavar="RECIPE", type=click.Path())
@click.option("--dry-run", is_flag=True,
              help="Read and check every input, print the plan (what runs, resumes, is kept or redone) and stop.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field: rounds=2, ppo.steps=20, label.both_orders=false; repeatable.")
@click.option("--rounds", type=click.IntRange(min=1),
              help="Rounds of sample -> label -> reward -> ppo (overrides the recipe).")
def run_recipe(recipe_file: str, dry_run: bool, settings: tuple[str, ...], rounds: int | None) -> None:
    """Run a recipe: every stage of the loop, in rounds, resumable.

    (rankings import) -> critique -> sft -> sample -> label -> reward -> ppo, then for each further round:
    sample from the last policy -> label the new pairs -> a reward model on every label so far -> PPO from the
    last policy; after the last round, eval compares every policy on held-out prompts and OUT/report.html is
    written. Before anything runs, every setting is checked and every file the recipe names is read (prompts,
    human rankings with the recipe's `rankings` settings, constitutions): a problem stops it at once, naming the
    file, line and the setting that fixes it. Settings nothing reads are reported as warnings.
    Rerun the same command after a crash: finished stages are kept, a half-finished one resumes.
    Change a stage's settings (in the recipe or with --set) and that stage runs again, with every stage after it.

    \b
    Examples:
      rlaif run examples/quickstart/recipe.yaml --dry-run
      rlaif run examples/quickstart/recipe.yaml
      rlaif run my-project/recipe.yaml --rounds 2 --set ppo.steps=50
    """
    from rlaif import pipeline

    overrides = _parse_set(settings)
    if rounds is not None:
        overrides["rounds"] = rounds
    recipe = pipeline.load_recipe(recipe_file, overrides)
    for note in pipeline.unused_settings(recipe):
        err.print(f"[yellow]warning:[/yellow] {escape(note)}", soft_wrap=True)
    if dry_run:
        steps = pipeline.plan(recipe)
        for line in pipeline.check_inputs(recipe, steps):
            out.print(escape(line), soft_wrap=True)
        for step in steps:
            out.print(escape(step.describe()), soft_wrap=True)
        todo = sum(step.state != "done" for step in steps)
        out.print(f"{todo} of {len(steps)} steps to run")
        return

    def announce(step) -> None:
        out.print(f"[bold]round {step.round} · {step.stage}[/bold] [dim]{step.state} → {escape(str(step.directory))}"
                  "[/dim]", soft_wrap=True)

    from rlaif.ppo.trainer import PPOStopped

    try:
        steps = pipeline.run(recipe, on_step=announce)
    except PPOStopped as e:
        err.print(f"[bold red]stopped:[/bold red] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    run_dir = steps[-1].directory.parent
    out.print(f"[green]✓[/green] {len(steps)} steps done; report → {escape(str(run_dir / 'report.html'))}",
              soft_wrap=True)


# --------------------------------------------------------------------------------------------------------------------
# rlaif eval


class _DefaultGroup(_Group):
    """A group whose first argument, when it is not one of its commands, goes to its `policies` command."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["policies", *args]
        return super().resolve_command(ctx, args)


@cli.group(name="eval", cls=_DefaultGroup)
def eval_group() -> None:
    """Evaluate a run's policies (`rlaif eval RUN`) or the AI labeler (`rlaif eval labeler`)."""


@eval_group.command(name="policies")
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--prompts", help="Held-out prompts.  [default: the eval_prompts PPO used, else its prompts]")
@click.option("--out", help="Where responses, judgements and eval.json go.  [default: RUN/eval]")
@click.option("--judge", help="Constitution of the AI judge's questions.  [default: judge, unused in training]")
@click.option("--labeler", help="The judge's model.  [default: the run's labeler]")
@click.option("--reward-model", help="Reward model directory.  [default: the last round's]")
@click.option("--max-new-tokens", type=int, help="Reply length.  [default: PPO's]")
@click.option("--temperature", type=float, help="Sampling temperature, > 0.  [default: PPO's]")
@click.option("--seed", type=int, help="Sampling seed.  [default: 0]")
@click.option("--batch-size", type=int, help="Replies per forward pass.  [default: 8]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@recipe_option
def eval_policies(run_dir, config_file, **flags) -> None:
    """Compare a run's base, SFT and per-round policies on held-out prompts.

    Each policy answers every prompt once. Reported for all prompts, and for red-team prompts (tagged
    `red-team`) apart from the rest, so that over-refusal is visible: the reward model's score, win rates over
    the base and SFT models by the reward model and by the AI labeler under the `judge` constitution (questions
    no training stage used), KL to the base model, reply length and refusal rate. Rerun to resume.

    \b
    Examples:
      rlaif eval runs/quickstart
      rlaif eval runs/quickstart --prompts my-held-out.jsonl --out runs/quickstart/eval-mine
    """
    from rlaif import evaluate

    config = stage_config(evaluate.EvalConfig, config_file, {**flags, "run": run_dir})
    summary = evaluate.evaluate_policies(config, progress=True)
    print_policy_eval(summary)
    out.print(f"[green]✓[/green] → {escape(config.out or os.path.join(run_dir, 'eval'))}/eval.json "
              f"({escape(summary['judging']['summary'])})", soft_wrap=True)


def print_policy_eval(summary: dict) -> None:
    from rlaif.evaluate import SUMMARY_COLUMNS as columns

    for group, results in summary["results"].items():
        n = next(iter(results.values()))["prompts"]
        table = Table(title=f"{group} prompts ({n})")
        table.add_column("policy")
        for _, title in columns:
            table.add_column(title, justify="right")
        for name, entry in results.items():
            table.add_row(name, *(f"{entry[key]:.3g}" if key in entry else "-" for key, _ in columns))
        out.print(table)


@cli.command()
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--out", "out_path", type=click.Path(), help="The HTML file.  [default: RUN/report.html]")
def report(run_dir: str, out_path: str | None) -> None:
    """Write a run's report: one self-contained HTML file.

    Win rates per round, PPO curves (reward, KL, beta, entropy, length), reward-model calibration, labeler
    consistency per principle, and the same prompts answered by the base, SFT and final policy. It reads only
    files the stages wrote, so it takes seconds; `rlaif run` writes it at the end of every run.

    \b
    Example:
      rlaif report runs/quickstart && open runs/quickstart/report.html
    """
    from rlaif.report import render

    path = render(run_dir, out_path)
    out.print(f"[green]✓[/green] report → {escape(str(path))}", soft_wrap=True)


@eval_group.command(name="labeler")
@click.option("--pairs", type=click.Path(),
              help="Human-labelled pairs: hh-rlhf transcripts (chosen/rejected) or prompt/chosen/rejected rows.")
@click.option("--out", help="Writes OUT/labeler_report.json.  [default: runs/eval]")
@click.option("-c", "--constitution", help="Shipped constitution name or a path.  [default: default]")
@click.option("--labeler", help="The labeling model.  [default: smollm2-135m-instruct]")
@click.option("--limit", type=int,
              help="Pairs read (the first N); empty or identical replies are left out.  [default: 100]")
@click.option("--ensemble", type=int, help="Principles per pair in the ensemble mode.  [default: 4]")
@click.option("--cot/--no-cot", "chain_of_thought", default=None, help="Also evaluate chain of thought.  [default: on]")
@click.option("--injection-pairs", type=int, help="Pairs per injection attack; 0 skips them.  [default: 8]")
@click.option("--batch-size", type=int, help="Pairs per batch.  [default: 8]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@recipe_option
def eval_labeler(config_file, **flags) -> None:
    """The labeler's report card on pairs people have labeled.

    Agreement with the human choice, position consistency and calibration (ECE) for each labeling mode side by
    side (single order, both orders, an ensemble of principles, chain of thought), agreement per principle, and
    how often prompt-injection attacks written into a response flip the label.

    \b
    Example:
      rlaif eval labeler --pairs ../shared/data/hh-harmless-dev.jsonl --limit 100 --out runs/eval
    """
    from rlaif import evaluate

    config = stage_config(evaluate.LabelerEvalConfig, config_file, flags)
    if not config.pairs:
        raise click.UsageError("--pairs is required (or `pairs:` in --config)")
    report = evaluate.evaluate_labeler(config, progress=True)
    evaluate.print_labeler_report(report, out)
    out.print(f"[green]✓[/green] report → {escape(config.out)}/labeler_report.json ({escape(report['summary'])})",
              soft_wrap=True)


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not the user's business
    cli()


if __name__ == "__main__":
    main()
