"""Quickstart: the shipped constitution, the embedded model, and one critique-and-revise round on a few prompts.

    make quickstart                      # sets up .venv first, then runs this
    .venv/bin/python examples/quickstart/quickstart.py [--model M] [--n 4]

Each prompt is answered, the answer is critiqued under a principle drawn from the constitution, and revised. This is
the core move of Constitutional AI's supervised stage, shown on four prompts in about a minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from rlaif.constitution import load_constitution
from rlaif.generate import GenerationConfig, generate
from rlaif.models import load_model
from rlaif.records import load_prompts

HERE = Path(__file__).resolve().parent
PROMPTS = HERE.parent / "prompts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model spec (default: the embedded model)")
    parser.add_argument("--constitution", default="default", help="constitution name or path")
    parser.add_argument("--n", type=int, default=4, help="how many prompts (half red-team, half helpful)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    console = Console()

    constitution = load_constitution(args.constitution)
    console.print(f"[bold]Constitution[/bold] {constitution.name} {constitution.version}: "
                  f"{len(constitution.principles)} principles")
    red_team, helpful = load_prompts(PROMPTS / "red-team.jsonl"), load_prompts(PROMPTS / "helpful.jsonl")
    prompts = red_team[: (args.n + 1) // 2] + helpful[: args.n // 2]

    started = time.time()
    model, tokenizer = load_model(args.model)
    console.print(f"[bold]Model[/bold] {args.model} loaded in {time.time() - started:.1f}s")
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=0)

    # One principle per prompt, drawn by weight and seeded, as the critique stage does each round.
    rng = random.Random(constitution.critique.seed)
    principles = rng.choices(constitution.principles, weights=[p.weight for p in constitution.principles], k=len(prompts))

    conversations = [list(p["prompt"]) for p in prompts]
    answers = generate(model, tokenizer, conversations, config)
    for conv, answer, principle in zip(conversations, answers, principles):
        conv += [{"role": "assistant", "content": answer.text}, {"role": "user", "content": principle.critique_request}]
    critiques = generate(model, tokenizer, conversations, config)
    for conv, critique, principle in zip(conversations, critiques, principles):
        conv += [{"role": "assistant", "content": critique.text}, {"role": "user", "content": principle.revision_request}]
    revisions = generate(model, tokenizer, conversations, config)

    for prompt, answer, principle, critique, revision in zip(prompts, answers, principles, critiques, revisions):
        console.print(Panel(
            f"[bold]Prompt[/bold] ({', '.join(prompt.get('tags', []))}): {escape(prompt['prompt'][-1]['content'])}\n\n"
            f"[bold]Answer[/bold]: {escape(answer.text)}\n\n"
            f"[bold]Critique[/bold] under [cyan]{principle.id}[/cyan]: {escape(critique.text)}\n\n"
            f"[bold]Revision[/bold]: {escape(revision.text)}",
            title=prompt["id"], title_align="left"))
    tokens = sum(len(g.token_ids) for g in answers + critiques + revisions)
    seconds = time.time() - started
    console.print(f"{len(prompts)} prompts, {tokens} generated tokens in {seconds:.1f}s")


if __name__ == "__main__":
    main()
