"""Whole runs: `rlaif run` (a recipe: every stage, in rounds), `rlaif eval`, `rlaif report` and `rlaif export`."""

from __future__ import annotations

import os
import shlex
import sys

import click
from rich.table import Table

from rlaif.cli import _Group, cli, err, out, recipe_option, shown, stage_config
from rlaif.cli.data import label_engine_options

# --------------------------------------------------------------------------------------------------------------------
# rlaif run


def _parse_set(values: tuple[str, ...]) -> dict:
    """KEY=VALUE overrides, each VALUE read as YAML the way the recipe file is (records.parse_yaml)."""
    import yaml

    from rlaif.records import parse_yaml

    overrides = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE, e.g. ppo.steps=20", param_hint="--set")
        try:
            overrides[key.strip()] = parse_yaml(value, f"--set {key.strip()}")[0]  # a duplicate key: a DataError
        except yaml.YAMLError as e:
            raise click.BadParameter(f"{item!r}: the value is not valid YAML ({e})", param_hint="--set") from None
    return overrides


@cli.command(name="run")
@click.argument("recipe_file", metavar="RECIPE", type=click.Path())
@click.option("--dry-run", is_flag=True,
              help="Read and check every input, print the plan (what runs, resumes, is kept or redone) and stop.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field: rounds=2, ppo.steps=20, label.both_orders=false; repeatable.")
@click.option("--rounds", type=click.IntRange(min=1),
              help="Rounds of sample -> label -> reward -> ppo (overrides the recipe).")
@click.option("--num-processes", type=click.IntRange(min=1),
              help="Run each training stage (sft, reward, ppo, dpo, grpo) under `accelerate launch` with this many "
                   "processes, one per GPU (overrides the recipe's num_processes).  [default: 1, in this process]")
@click.option("--skip-human", is_flag=True,
              help="With human.route: go on without waiting for people's answers to a round's pairs (its reward "
                   "stage trains on what there is); a later rerun picks up answers given since.")
def run_recipe(recipe_file: str, dry_run: bool, settings: tuple[str, ...], rounds: int | None,
               num_processes: int | None, skip_human: bool) -> None:
    """Run a recipe: every stage of the loop, in rounds, resumable.

    (rankings import) -> critique -> sft -> sample -> label -> (labeler check) -> reward -> ppo, then for each
    further round: sample from the last policy -> label the new pairs -> a reward model on every label so far ->
    PPO from the last policy; after the last round, eval compares every policy on held-out prompts and
    OUT/report.html is written. With human files, the labeler check first scores the labeler against people on
    their pairs (OUT/labeler-check/) and `label.gate` decides: weight (default; the reward stage weighs the AI
    labels by their measured reliability), warn (a warning; they train at ai_weight) or stop (the run stops when
    the labeler does not beat the baselines: prefer the shorter reply, the longer, the first position, a coin).
    With `human: {files: [...], route: {budget: 200, weight: 2}}`, each round exports the pairs its labeler was
    least sure of to OUT/round-K/human/ and stops (exit status 2) until people rank them there (`rlaif rank serve
    OUT/round-K/human`, or Label Studio); rerun then, and the round's reward stage mixes their answers in
    (--skip-human goes on without them). Before anything runs, every setting is checked and every file the recipe names is read (prompts,
    human rankings with the recipe's `rankings` settings, constitutions): a problem stops it at once, naming the
    file, line and the setting that fixes it. Settings nothing reads are reported as warnings.
    Rerun the same command after a crash: finished stages are kept, a half-finished one resumes.
    Change a stage's settings (in the recipe or with --set) and that stage runs again, with every stage after it.

    \b
    Examples:
      rlaif run examples/quickstart/recipe.yaml --dry-run
      rlaif run examples/quickstart/recipe.yaml
      rlaif run my-project/recipe.yaml --rounds 2 --set ppo.steps=50
      rlaif run examples/gpu/recipe.yaml --num-processes 8
      rlaif run examples/human-mix/recipe.yaml --set label.gate=stop
      rlaif run my-project/recipe.yaml --set human.route.budget=100 --skip-human
    """
    from rlaif import pipeline
    from rlaif import recipe as recipes

    overrides = _parse_set(settings)
    if rounds is not None:
        overrides["rounds"] = rounds
    if num_processes is not None:
        overrides["num_processes"] = num_processes
    from rlaif.records import stage_writer

    recipe = recipes.load_recipe(recipe_file, overrides)
    for note in recipes.unused_settings(recipe):
        err.print(f"[yellow]warning:[/yellow] {shown(note)}", soft_wrap=True)
    for note in recipes.label_notes(recipe):
        err.print(f"[yellow]note:[/yellow] {shown(note)}", soft_wrap=True)
    if skip_human and recipe.human_route is None:
        err.print("[yellow]warning:[/yellow] --skip-human: not used: the recipe has no human.route, so no round waits "
                  "for people", soft_wrap=True)
    run_dir = pipeline.output_dir(recipe)
    if dry_run:
        steps = pipeline.plan(recipe, skip_human)
        for line in recipes.check_inputs(recipe, steps):
            out.print(shown(line), soft_wrap=True)
        out.print(f"out: {shown(str(run_dir.resolve()))}", soft_wrap=True)
        for step in steps:
            out.print(shown(step.describe()), soft_wrap=True)
        todo = sum(step.state != "done" for step in steps)
        out.print(f"{todo} of {len(steps)} steps to run")
        if writer := stage_writer(run_dir):
            err.print(f"[yellow]warning:[/yellow] another rlaif process ({shown(writer)}) is running this recipe "
                      "now; a run would stop at once", soft_wrap=True)
        return

    def announce(step) -> None:
        where = shown(recipes.shown_path(step.directory))
        out.print(f"[bold]round {step.round} · {step.stage}[/bold] [dim]{step.state} → {where}[/dim]", soft_wrap=True)

    def report(step, summary: str) -> None:
        if summary:
            out.print(f"  {shown(step.stage)}: {shown(summary)}", soft_wrap=True)

    def warn(step, text: str) -> None:
        err.print(f"[yellow]warning:[/yellow] {shown(text)}", soft_wrap=True)

    def note(step, text: str) -> None:
        out.print(f"[bold]round {step.round} · {step.stage}:[/bold] {shown(text)}", soft_wrap=True)

    from rlaif.ppo.trainer import PPOStopped

    out.print(f"out: {shown(str(run_dir.resolve()))}", soft_wrap=True)
    command = shlex.join(["rlaif", "run", recipe_file, *(a for s in settings for a in ("--set", s)),
                          *(["--rounds", str(rounds)] if rounds is not None else []),
                          *(["--num-processes", str(num_processes)] if num_processes is not None else [])])
    try:
        steps = pipeline.run(recipe, on_step=announce, on_done=report, on_warning=warn, on_note=note,
                             skip_human=skip_human, command=command)
    except (PPOStopped, pipeline.LabelerGateStopped, pipeline.HumanRouteStopped) as e:
        err.print(f"[bold red]stopped:[/bold red] {shown(str(e))}", soft_wrap=True)
        sys.exit(2)
    out.print(f"[green]✓[/green] {len(steps)} steps done; report → {shown(str(run_dir.resolve() / 'report.html'))}",
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
@click.option("--engine", type=click.Choice(["rlaif", "vllm"]),
              help="Who samples the replies: rlaif (here) or vllm (vLLM, each policy in a process of its own); "
                   "log-probabilities, rewards and the judge are computed here either way.  [default: rlaif]")
@recipe_option
def eval_policies(run_dir, config_file, **flags) -> None:
    """Compare a run's base, SFT and per-round policies on held-out prompts.

    Each policy answers every prompt once. Reported for all prompts, and for red-team prompts (tagged
    `red-team`) apart from the rest, so that over-refusal is visible: the reward model's score, win rates over
    the base and SFT models by the reward model and by the AI labeler under the `judge` constitution (questions
    no training stage used), plain and length-controlled (LC: the win rate at equal reply length), KL to the
    base model, reply length and refusal rate, each with its 95% bootstrap interval. Rerun to resume.

    \b
    Examples:
      rlaif eval runs/quickstart
      rlaif eval runs/quickstart --prompts my-held-out.jsonl --out runs/quickstart/eval-mine
    """
    from rlaif import evaluate

    config = stage_config(evaluate.EvalConfig, config_file, {**flags, "run": run_dir})
    summary = evaluate.evaluate_policies(config, progress=True)
    print_policy_eval(summary)
    out.print(f"[green]✓[/green] → {shown(config.out or os.path.join(run_dir, 'eval'))}/eval.json "
              f"({shown(summary['answering']['summary'])}; judge: {shown(summary['judging']['summary'])})",
              soft_wrap=True)


def print_policy_eval(summary: dict) -> None:
    """Per group, each policy's figures with their 95% intervals under them (LC: length-controlled)."""
    from rlaif.evaluate import SUMMARY_COLUMNS as columns
    from rlaif.evaluate import shown_figure

    for group, results in summary["results"].items():
        n = next(iter(results.values()))["prompts"]
        table = Table(title=f"{shown(group)} prompts ({n})")  # a tag from the user's prompt file
        table.add_column("policy")
        for _, title in columns:
            table.add_column(title, justify="right")
        for name, entry in results.items():
            table.add_row(shown(name), *(shown_figure(entry, key, "\n") if key in entry else "-" for key, _ in columns))
        out.print(table)
    if "method" in summary:
        out.print(f"[dim]{shown(summary['method'])}[/dim]")


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
    out.print(f"[green]✓[/green] report → {shown(str(path))}", soft_wrap=True)


@eval_group.command(name="labeler")
@click.option("--pairs", type=click.Path(),
              help="Human-labelled pairs: hh-rlhf transcripts (chosen/rejected) or prompt/chosen/rejected rows.")
@click.option("--out", help="Writes OUT/labeler_report.json and OUT/labels.jsonl.  [default: runs/eval]")
@click.option("-c", "--constitution", help="Shipped constitution name or a path.  [default: default]")
@click.option("--labeler", help="The labeling model.  [default: smollm2-135m-instruct]")
@click.option("--limit", type=int,
              help="Pairs read (the first N); empty or identical replies are left out.  [default: 100]")
@click.option("--ensemble", type=int, help="Principles per pair in the ensemble mode.  [default: 4]")
@click.option("--cot/--no-cot", "chain_of_thought", default=None, help="Also evaluate chain of thought.  [default: on]")
@click.option("--injection-pairs", type=int, help="Pairs per injection attack; 0 skips them.  [default: 8]")
@click.option("--order-free/--no-order-free", "order_free_modes", default=None,
              help="Also the likelihood contrast and score difference modes, which show no reply beside the other."
                   "  [default: on]")
@click.option("--label-mode", type=click.Choice(["compare", "contrast", "score"]),
              help="The mode of the labels in labels.jsonl (as `rlaif label --mode`): pass that file to `rlaif "
                   "reward --calibration` to measure labels made in that mode.  [default: compare]")
@click.option("--batch-size", type=int, help="Pairs per batch.  [default: 8]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@label_engine_options
@recipe_option
def eval_labeler(config_file, base_url, **flags) -> None:
    """The labeler's report card on pairs people have labeled.

    Agreement with the human choice, position consistency and calibration (ECE) for each labeling mode side by
    side (single order, both orders, an ensemble of principles, chain of thought, likelihood contrast, score
    difference) and for the baselines it must
    beat on the same pairs (prefer the shorter reply, prefer the longer one, always the first position, a coin),
    agreement per principle, and how often prompt-injection attacks written into a response flip the label. Every
    figure comes with its 95% bootstrap interval; the verdict, printed last, says whether the best mode beats the
    best baseline. The judgements `rlaif label` would make go to OUT/labels.jsonl, with people's choice.

    \b
    Example:
      rlaif eval labeler --pairs ../shared/data/hh-harmless-dev.jsonl --limit 100 --out runs/eval
    """
    from rlaif import report_card

    flags.update(base_url=list(base_url) or None)
    config = stage_config(report_card.LabelerEvalConfig, config_file, flags)
    if not config.pairs:
        raise click.UsageError("--pairs is required (or `pairs:` in --config)")
    report = report_card.evaluate_labeler(config, progress=True)
    report_card.print_labeler_report(report, out)
    injection = f"; injection: {report['injection']['summary']}" if "injection" in report else ""
    out.print(f"[green]✓[/green] report → {shown(config.out)}/labeler_report.json ({shown(report['summary'])}"
              f"{shown(injection)})", soft_wrap=True)


# --------------------------------------------------------------------------------------------------------------------
# rlaif export verl | openrlhf


@cli.group(name="export", cls=_Group)
def export_group() -> None:
    """Hand a round's RL step to verl or OpenRLHF, and bring the policy back for `rlaif eval`.

    For a policy too large for rlaif's own PPO. Run the recipe until the round's reward stage has finished (stop
    `rlaif run` when it prints `round K · ppo`: finished stages are kept, and the ppo stage has written the
    config.yaml whose settings the export maps), then export the round: its reward model and starting policy
    (hard-linked, readable by transformers 4 and 5), its prompts in the engine's format and a launch script with
    the round's PPO settings. Train with the engine, then compare the policy it trained with the others:

    \b
      rlaif export verl runs/gpu                      -> runs/gpu/export-verl-round-1/
      bash runs/gpu/export-verl-round-1/run_verl.sh   (where verl and Ray are installed)
      rlaif eval runs/gpu --config runs/gpu/export-verl-round-1/eval.yaml

    The export's README.txt says what was mapped, what was not, and how to get the trained policy back.
    """


def _export_options(command):
    for option in reversed([
        click.argument("run_dir", metavar="RUN", type=click.Path()),
        click.option("--round", "round_", type=click.IntRange(min=1),
                     help="The round to export (RUN/round-K may also be given as RUN).  [default: the last round "
                          "with a finished reward model]"),
        click.option("--out", type=click.Path(file_okay=False),
                     help="Where the files go; the engine's checkpoints and trained policy go there too.  "
                          "[default: RUN/export-ENGINE-round-K]"),
        click.option("--prompts", type=click.Path(),
                     help="Training prompts (any file `rlaif ppo --prompts` reads).  [default: the round's]"),
        click.option("--policy", type=click.Path(),
                     help="The policy to start from, a Hugging Face directory: for round K > 1 the policy round "
                          "K-1 trained with an engine.  [default: round-1/sft, or round K-1's policy]"),
    ]):
        command = option(command)
    return command


def _export(engine: str, run_dir: str, round_: int | None, out_dir: str | None, prompts: str | None,
            policy: str | None, eval_prompts: str | None = None) -> None:
    from rlaif.export import export, find_round

    handoff = find_round(run_dir, round_, prompts=prompts, eval_prompts=eval_prompts, policy=policy)
    summary = export(engine, handoff, out_dir)
    out.print(f"[green]✓[/green] round {summary['round']} → {shown(summary['out'])}", soft_wrap=True)
    out.print(f"  prompts: {shown(summary['prompts'])}"
              + (f"; eval prompts: {shown(summary['eval_prompts'])}" if summary["eval_prompts"] else ""),
              soft_wrap=True)
    out.print(f"  reward model: {shown(handoff.reward_model)} ({summary['models']['reward model']}); start policy: "
              f"{shown(handoff.policy)} ({summary['models']['start policy']})", soft_wrap=True)
    out.print(f"  PPO settings from {shown(handoff.ppo_source)}", soft_wrap=True)
    for note in summary["notes"]:
        err.print(f"[yellow]note:[/yellow] {shown(note)}", soft_wrap=True)
    out.print(f"  next: bash {shown(summary['script'])}   (README.txt beside it: how to bring the policy back)",
              soft_wrap=True)


@export_group.command(name="verl")
@_export_options
@click.option("--eval-prompts", type=click.Path(),
              help="Held-out prompts, for val.parquet.  [default: PPO's eval_prompts, else those `rlaif eval` used]")
def export_verl(run_dir, round_, out, prompts, policy, eval_prompts) -> None:
    """Export a round for verl: parquet prompts, the reward model, run_verl.sh.

    Writes train.parquet (and val.parquet from the held-out prompts): one row per prompt with data_source
    (rlaif/red-team or rlaif/helpful), prompt (the chat list), ability, reward_model {style: model} and extra_info
    {split, index, id}. run_verl.sh runs `python3 -m verl.trainer.main_ppo` with the reward model as verl's reward
    worker, reading replies through its chat template as rlaif does, and the round's PPO settings where verl has the
    same one (KL penalty in the reward, estimator, gamma, lam, clip ranges, lengths, temperature, learning rates,
    steps); verl does not normalise a model's reward, so the KL coefficient is scaled by the reward's std instead.

    \b
    Examples:
      rlaif export verl runs/gpu
      rlaif export verl runs/gpu --round 2 --out /shared/handoff/round-2
      rlaif export verl runs/gpu/round-2 --policy /shared/handoff/round-1/trained-policy
    """
    _export("verl", run_dir, round_, out, prompts, policy, eval_prompts)


@export_group.command(name="openrlhf")
@_export_options
def export_openrlhf(run_dir, round_, out, prompts, policy) -> None:
    """Export a round for OpenRLHF: prompts.jsonl, the reward model, run_openrlhf.sh.

    Writes prompts.jsonl (each prompt's chat list under `input`, with its id and tags) and run_openrlhf.sh:
    `python3 -m openrlhf.cli.train_ppo_ray` with the dotted flags of OpenRLHF 0.10.2 and later (the script lists
    the older names), --data.apply_chat_template, --reward.normalize_enable with the reward model's mean and std
    written into its config.json, and the round's PPO settings where OpenRLHF has the same one. OpenRLHF reads the
    reward at the policy's EOS token: where the chat template closes a reply with more (ChatML: a newline), that
    is not where rlaif's reward model reads it, and the export says so.

    \b
    Examples:
      rlaif export openrlhf runs/gpu
      rlaif export openrlhf runs/gpu --round 1 --out /shared/handoff/openrlhf
    """
    _export("openrlhf", run_dir, round_, out, prompts, policy)
