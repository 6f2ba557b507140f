"""Starting out: `rlaif init`, `rlaif constitution check|show|diff` and `rlaif generate`."""

from __future__ import annotations

import os
import sys

import click
from rich.table import Table
from rich.text import Text

from rlaif.cli import _Group, cli, err, out, shown, stage_config, terminal_safe

# --------------------------------------------------------------------------------------------------------------------
# rlaif init


@cli.command()
@click.argument("directory", metavar="DIR", type=click.Path())
@click.option("--name", help="The run's name (runs/NAME), a plain name; the constitution's is made from it "
              "(lowercase, other characters '-').  [default: the directory's name]")
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
    import shlex

    from rlaif.workspace import init as make

    written = make(directory, name)
    for path in written:
        out.print(f"  {shown(str(path))}", soft_wrap=True)
    out.print(f"[green]✓[/green] next: rlaif run {shown(shlex.quote(os.path.join(directory, 'recipe.yaml')))}",
              soft_wrap=True)


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
            err.print(f"[red]✗[/red] {shown(spec)}: {len(e.problems)} problem(s)")
            for problem in e.problems:
                err.print(f"  {terminal_safe(problem)}", markup=False, soft_wrap=True)
            continue
        families = ", ".join(f"{f} {n}" for f, n in Counter(p.family for p in c.principles).items())
        examples = (f", {len(c.critique_examples)} critique and {len(c.label_examples)} label examples"
                    if c.critique_examples or c.label_examples else "")
        out.print(f"[green]✓[/green] {shown(spec)}: {len(c.principles)} principles ({families}){examples}",
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
    out.print(f"[bold]{shown(c.name)}[/bold] {shown(c.version)}  [dim]{shown(str(c.path))}[/dim]")
    out.print(terminal_safe(c.description.strip()), markup=False)
    if full:
        for p in c.principles:
            out.print(f"\n[bold]{shown(p.id)}[/bold]  [dim]{shown(p.family)} · weight {p.weight:g} · "
                      f"{shown(p.source)}[/dim]")
            out.print(f"  critique:   {terminal_safe(p.critique_request)}", markup=False)
            out.print(f"  revision:   {terminal_safe(p.revision_request)}", markup=False)
            out.print(f"  comparison: {terminal_safe(p.comparison_question)}", markup=False)
        return
    table = Table(show_lines=False)
    for column in ("id", "family", "weight", "comparison question"):
        table.add_column(column, overflow="fold")
    for p in c.principles:
        table.add_row(Text(terminal_safe(p.id)), Text(terminal_safe(p.family)), f"{p.weight:g}",
                      Text(terminal_safe(p.comparison_question)))
    out.print(table)
    s, lab = c.critique, c.label
    out.print(f"critique: {s.rounds} rounds, {s.sampling} sampling, seed {s.seed}")
    out.print(f"label: {lab.principles_per_comparison} principle(s) per comparison, both orders {lab.both_orders}, "
              f"chain of thought {lab.chain_of_thought}, clamp {list(lab.clamp)}")


@constitution.command("diff")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--candidates", type=click.Path(),
              help="Pairs to relabel: candidates.jsonl from `rlaif sample`, or preference rows. Without it, only "
                   "what changed in the text is shown (no model).")
@click.option("--labeler", help="The labeling model.  [default: smollm2-135m-instruct]")
@click.option("--limit", type=int,
              help="Pairs read (the first N); empty or identical replies are left out.  [default: 64]")
@click.option("--min-margin", type=float,
              help="A flip is confident when both labels are this far from 0.5 (label's low_confidence).  "
                   "[default: 0.05]")
@click.option("--out", help="The JSON report.  [default: runs/constitution-diff.json]")
@click.option("--batch-size", type=int, help="Pairs per batch.  [default: 8]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
def constitution_diff(a: str, b: str, **flags) -> None:
    """What editing a constitution changes: the text, and with --candidates which labels flip and why.

    Printed: the principles added, removed and edited from A to B, with each edited field's old and new text;
    label settings and templates; the few-shot label examples the labeler reads differently (an example asks the
    question of the principle it names, so editing that question changes what every pair is labeled after).
    With --candidates the same labeler labels the same pairs under each constitution's label settings: how many
    labels flip (cross 0.5) and how many of those confidently; each flip is put on the changed principles its pair
    drew, or, for a pair that drew only unchanged ones, on the changed few-shot examples, template or settings,
    never on an unchanged principle; the flipped pairs.

    \b
    Examples:
      cp constitution/default.yaml mine.yaml     # edit a principle in mine.yaml, then:
      rlaif constitution diff default mine.yaml
      rlaif constitution diff default mine.yaml --candidates runs/quickstart/round-1/sample/candidates.jsonl
    """
    from rlaif import diff

    config = stage_config(diff.DiffConfig, None, {**flags, "a": a, "b": b})
    report = diff.run(config, progress=True)
    diff.print_report(report, out)
    out.print(f"[green]✓[/green] report → {shown(config.out)}", soft_wrap=True)


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
@click.option("--top-p", type=float, help="Nucleus sampling threshold (temperature > 0).  [default: 1.0]")
@click.option("--seed", type=int, help="Seed for sampling (temperature > 0).")
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
    from rlaif.models import load_model, unused_settings

    if not all(p.strip() for p in prompts):
        raise click.BadParameter("a prompt is empty; give the text of a user message", param_hint="'-p' / '--prompt'")
    config = stage_config(GenerationConfig, None, {"max_new_tokens": max_new_tokens, "temperature": temperature,
                                                   "top_p": top_p, "seed": seed})
    if config.temperature == 0:  # as sample and critique: a sampling setting that greedy decoding never reads
        unused_settings(config, ["top_p", "seed"], "no effect with temperature 0 (greedy); give -t > 0 to sample")
    lm, tokenizer = load_model(model, device=device)
    head = [{"role": "system", "content": system}] if system else []
    conversations = [head + [{"role": "user", "content": p}] for p in prompts]
    for prompt, reply in zip(prompts, run(lm, tokenizer, conversations, config, progress=len(prompts) > 1)):
        if len(prompts) > 1:
            out.print(f"[bold]> {shown(prompt)}[/bold]")
        out.print(terminal_safe(reply.text), markup=False)
        if reply.finish_reason == "length":
            err.print(f"[dim](stopped at --max-new-tokens {max_new_tokens})[/dim]")
        elif reply.finish_reason == "too_long":
            err.print(f"[yellow]not generated: {reply.prompt_tokens} prompt tokens and --max-new-tokens "
                      f"{max_new_tokens} do not fit in the model's context of "
                      f"{lm.config.max_position_embeddings} tokens[/yellow]")
