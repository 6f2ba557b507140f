"""The run report: one self-contained HTML file, RUN/report.html (`rlaif report RUN`; `rlaif run` writes it too).

    rlaif report runs/quickstart        # then open runs/quickstart/report.html

It reads only files the stages wrote, so it takes seconds and can be rebuilt at any time:

| section | from |
|---|---|
| first, when the run checked its labeler: the verdict and the report card, modes beside baselines | labeler-check/labeler_report.json |
| win rates per round, reward, KL, length and refusals (red-team and helpful apart) | eval/eval.json |
| PPO (or GRPO, RLOO) over steps: reward, KL, beta, entropy, reply length, rounds end to end | round-K/ppo/metrics.jsonl |
| reward-model calibration on held-out pairs, and its metrics per round | round-K/reward/metrics.json |
| human data: rows, annotators, people's agreement with each other, each principle against people | round-K/reward/metrics.json, labeler-check/labeler_report.json (`human_agreement`) |
| labeler consistency and confidence, per round and per principle | round-K/label/preferences.jsonl |
| the same held-out prompts answered by the base, SFT and final policy | eval/responses.jsonl |

Figures carry their 95% bootstrap intervals where the stage wrote them (rlaif.stats). Plots are matplotlib PNGs embedded as data URIs, so the file can be mailed or attached to an issue as is.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from rlaif.evaluate import SUMMARY_COLUMNS, labeler_summary, policy_dir, rounds_of, shown_figure
from rlaif.records import ConfigError, parse_yaml, read_jsonl, read_text, write_atomic
from rlaif.stats import Estimate

PPO_CURVES = [("score", "reward"), ("kl", "KL to reference"), ("beta", "beta"), ("entropy", "entropy"),
              ("response_length", "reply length (tokens)")]
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.1em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #666; } .note { color: #666; font-style: italic; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; } th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: pre-line; }
tr.section td { border-top: 2px solid #999; }
.verdict { font-weight: bold; padding: 0.6em 0.8em; border-left: 4px solid; }
.verdict.beats { color: #1a7f37; border-color: #1a7f37; } .verdict.fails { color: #c62828; border-color: #c62828; }
td.text { white-space: pre-wrap; max-width: 330px; font-size: 13px; }
figure { margin: 1em 0; } img { max-width: 100%; }
"""


def render(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a run directory; returns its path (default RUN/report.html)."""
    run = Path(run)
    if not (run / "round-1").is_dir():
        raise ConfigError(f"{run}: not a run directory (no round-1/); write one with `rlaif run RECIPE`")
    evaluation = _json(run / "eval" / "eval.json")
    # the rounds and policies the evaluation compared (a recipe's own plan), else every round found in RUN
    trained = {int(name.split("-", 1)[1]): Path(policy) for name, policy in (evaluation or {}).get("policies", {}).items()
               if name.startswith("round-")}
    rounds = sorted(trained) or rounds_of(run)
    written = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    parts = [f"<h1>{_e(run.name)}</h1>",
             f"<p class=meta>{_e(str(run))} · {len(rounds)} round(s) · report written {written}</p>"]
    parts += _labeler_check(run)
    parts += _evaluation(evaluation)
    parts += _ppo(run, rounds, trained)
    parts += _monitors(run, rounds, trained)
    parts += _reward(run, rounds)
    parts += _human_data(run, rounds)
    parts += _labeler(run, rounds)
    parts += _samples(run, evaluation)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>rlaif report: {_e(run.name)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    path = Path(out) if out else run / "report.html"
    write_atomic(path, page)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Sections


def _labeler_check(run: Path) -> list[str]:
    """The run's check of its labeler on pairs people labeled (labeler-check/labeler_report.json, written by `rlaif
    eval labeler`), when it has one: the verdict, then the report card with the baselines, per principle."""
    report = _json(run / "labeler-check" / "labeler_report.json")
    if not report:
        return []
    parts = ["<h2>Can the labeler be trusted?</h2>"]
    verdict = report.get("verdict")
    if verdict:
        parts.append(f"<p class='verdict {'beats' if verdict['beats'] else 'fails'}'>{_e(verdict['text'])}</p>")
    config = report.get("config", {})
    parts.append(f"<p>Labeler <code>{_e(config.get('labeler', '?'))}</code> with the <code>"
                 f"{_e(config.get('constitution', '?'))}</code> constitution on pairs people labeled "
                 f"(<code>{_e(config.get('pairs', '?'))}</code>; {_e(report.get('summary', ''))}), beside the "
                 "baselines a labeler must beat on the same pairs.</p>")
    def row(name: str, m: dict) -> list[str]:
        ece = m.get("ece")
        ece = Estimate(**ece).number() if isinstance(ece, dict) else _num(ece)
        floor = "" if m.get("ece_floor") is None else f" (floor {m['ece_floor']:.3f})"
        return [name, _interval(m.get("agreement")), _interval(m.get("consistency")), ece + floor,
                _interval(m.get("mean_confidence"))]

    modes = [row(name, m) for name, m in report.get("modes", {}).items()]
    skeptics = [row(name, m) for name, m in report.get("baselines", {}).items()]
    parts.append(_table(["mode / baseline", "agreement", "consistency", "ECE", "mean confidence"], modes + skeptics,
                        section=len(modes) if skeptics else None))
    parts.append("<p class=note>Consistency '-': one order shown, or a mode that shows no order (consistent by "
                 "construction). ECE floor: what a perfectly calibrated labeler with the same confidences would "
                 "score on these pairs; ECE is biased upward on few pairs.</p>")
    agreement = report.get("human_agreement") or {}
    if agreement.get("inter_annotator"):  # the ceiling a labeler can reach
        from rlaif.agreement import inter_annotator_line

        parts.append(f"<p>{_e(inter_annotator_line(agreement))}</p>")
    principles = report.get("per_principle", {})
    if principles:
        parts.append(_table(["principle", "pairs", "agreement (both orders)"],
                            [[pid, str(m["pairs"]), _interval(m["agreement"])] for pid, m in principles.items()]))
    injection = report.get("injection")
    if injection:
        parts.append(f"<p>Injection attacks written into a reply flip the label on {_interval(injection['flip_rate'])}"
                     f" of {injection['pairs']} attacked pairs ({_e(injection['summary'])}).</p>")
    if report.get("method"):
        parts.append(f"<p class=note>{_e(report['method'])}.</p>")
    return parts


def _evaluation(evaluation: dict | None) -> list[str]:
    parts = ["<h2>Policies on held-out prompts</h2>"]
    if not evaluation:
        return parts + ["<p class=note>Not evaluated yet: run <code>rlaif eval RUN</code>.</p>"]
    parts.append(f"<p>Reward model <code>{_e(evaluation['reward_model'])}</code>; AI judge "
                 f"<code>{_e(evaluation['labeler'])}</code> asking the <code>{_e(evaluation['judge'])}</code> "
                 f"constitution's questions; replies sampled at temperature {evaluation['temperature']}. A win "
                 "counts 1, a tie 1/2. LC: length-controlled, the win rate at equal reply length (Dubois et al. "
                 "2024, length-controlled AlpacaEval).</p>")
    columns = SUMMARY_COLUMNS
    for group, results in evaluation["results"].items():
        n = next(iter(results.values()))["prompts"]
        rows = [[name] + [shown_figure(entry, key, "\n") if key in entry else "-" for key, _ in columns]
                for name, entry in results.items()]
        parts.append(f"<h3>{_e(group)} prompts ({n})</h3>" + _table(["policy"] + [c for _, c in columns], rows))
    if evaluation.get("method"):
        parts.append(f"<p class=note>{_e(evaluation['method'])}.</p>")
    parts.append(_figure("win-rates", "Win rates over the base model, by reward model and by AI judge (bars: 95% "
                         "intervals)", _plot_win_rates(evaluation["results"])))
    return parts


def _ppo(run: Path, rounds: list[int], trained: dict[int, Path]) -> list[str]:
    series: list[tuple[int, list[dict]]] = []
    for k in rounds:
        policy = trained.get(k) or policy_dir(run / f"round-{k}") or run / f"round-{k}" / "ppo"
        if (policy / "metrics.jsonl").is_file():
            series.append((k, list(read_jsonl(policy / "metrics.jsonl"))))
    parts = ["<h2>Policy training</h2>"]
    if not any(rows for _, rows in series):
        return parts + ["<p class=note>No PPO, GRPO or RLOO steps logged (DPO logs its losses in metrics.json).</p>"]
    last = series[-1][1][-1] if series[-1][1] else {}
    parts.append(f"<p>{sum(len(rows) for _, rows in series)} steps over {len(series)} round(s); last step: reward "
                 f"{_num(last.get('score'))}, KL {_num(last.get('kl'))}, beta {_num(last.get('beta'))}.</p>")
    return parts + [_figure("ppo-curves", "Policy training over steps (rounds end to end; dotted lines start a round)",
                            _plot_ppo(series))]


def _monitors(run: Path, rounds: list[int], trained: dict[int, Path]) -> list[str]:
    """The reward-hacking monitors (rlaif/ppo/monitors.py) of each round's policy training, from its metrics.jsonl:
    each monitor over steps, the steps that crossed a threshold marked, and the warnings (the first of each kind,
    with how many steps crossed it). Nothing for runs that logged no monitors."""
    keys = [("monitor/score_length_corr", "score vs reply length (r)", (-1.05, 1.05)),
            ("monitor/score_kl_corr", "score vs KL (r)", (-1.05, 1.05)),
            ("monitor/truncated", "share cut at max_new_tokens", (-0.03, 1.03)),
            ("monitor/reward_judge_gap", "reward - judge (eval)", (None, None))]
    series, unfilled = [], []
    for k in rounds:
        policy = trained.get(k) or policy_dir(run / f"round-{k}") or run / f"round-{k}" / "ppo"
        rows = list(read_jsonl(policy / "metrics.jsonl")) if (policy / "metrics.jsonl").is_file() else []
        if any(row.get(key) is not None for row in rows for key, _, _ in keys):
            series.append((k, rows))
            # A warning needs two windows of at least monitor_min_replies replies each (rlaif/ppo/monitors.py)
            config = policy / "config.yaml"
            saved = (parse_yaml(read_text(config))[0] or {}) if config.is_file() else {}
            needed = 2 * int(saved.get("monitor_min_replies") or 32)
            logged = sum(int(row.get("monitor/replies") or 0) for row in rows)
            if logged < needed:
                unfilled.append(f"round {k}: {logged} replies logged, {needed} needed")
    if not series:
        return []
    parts = ["<h3>Reward-hacking monitors</h3>",
             ("<p>Signs of a policy gaming its reward: the score's correlation with reply length (Singhal et al. "
              "2023) and with the reply's KL to the reference, the share of replies cut at max_new_tokens, and, "
              "with a second reward model as judge, the training reward's lead over it on the eval prompts, which "
              "widens as the reward is over-optimised (Gao et al. 2023). The curves are per step; crosses mark the "
              "steps that warned, where for the correlation and the cut share the pooled replies of the latest steps "
              "and of as many before them were both past the threshold (rlaif/ppo/monitors.py).</p>")]
    plotted = [(key, title, limits) for key, title, limits in keys
               if any(r.get(key) is not None for _, rows in series for r in rows)]
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(series), len(plotted), figsize=(3.2 * len(plotted), 2.4 * len(series)),
                             squeeze=False)
    for (k, rows), row_axes in zip(series, axes):
        for ax, (key, title, limits) in zip(row_axes, plotted):
            logged = [r for r in rows if r.get(key) is not None]
            ax.plot([r["step"] for r in logged], [r[key] for r in logged], marker="." if len(logged) < 30 else None,
                    color="C0")
            kind = key.split("/", 1)[1] + ":"
            warned = [r for r in logged if any(w.startswith(kind) for w in r.get("warnings") or [])]
            ax.scatter([r["step"] for r in warned], [r[key] for r in warned], marker="x", color="C3", zorder=3)
            ax.set_title(f"round {k}: {title}", fontsize=10)
            ax.set_xlabel("step", fontsize=9)
            ax.set_ylim(*limits)
            ax.tick_params(labelsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    parts.append(_figure("ppo-monitors", "Reward-hacking monitors over steps, per round (x: a warning)", _png(fig)))
    warnings = []
    for k, rows in series:
        kinds: dict[str, list] = {}
        for row in rows:
            for warning in row.get("warnings") or []:
                kind, _, text = warning.partition(": ")
                kinds.setdefault(kind, [row["step"], 0, text])[1] += 1
        warnings += [[f"round {k}", kind, str(first), str(steps), text] for kind, (first, steps, text) in kinds.items()]
    if warnings:
        parts.append(_table(["round", "monitor", "first step", "steps warned", "first warning"], warnings, text=True))
    elif unfilled:  # too few replies to judge is not a pass
        parts.append(f"<p class=note>No warning, but the length and truncation monitors never had the two windows "
                     f"of replies they compare ({html.escape('; '.join(unfilled))}): train longer, or lower "
                     f"monitor_min_replies, before reading their silence as a pass.</p>")
    else:
        parts.append("<p class=note>No monitor crossed its threshold.</p>")
    return parts


def _reward(run: Path, rounds: list[int]) -> list[str]:
    """The reward models per round, then each round's reliability decision (metrics.json's `reliability`,
    rlaif.reward): every AI labeler measured against people, what its labels trained at and why, and the stage's
    warnings (labelers with no human label at all are left out of the table, and a note says they are unmeasured)."""
    parts = ["<h2>Reward model</h2>"]
    rows, calibration, reliability = [], {}, []
    for k in rounds:
        metrics = _json(run / f"round-{k}" / "reward" / "metrics.json")
        if not metrics:
            continue
        train, held = metrics["train"], (metrics.get("heldout") or {}).get("overall") or {}
        length = (metrics.get("heldout") or {}).get("length") or {}
        rows.append([f"round {k}", str(train["pairs"]), _num(train.get("first_loss")), _num(train.get("last_loss")),
                     str(held.get("pairs", 0)),
                     Estimate(**held["accuracy_interval"]).percent() if held.get("accuracy_interval")
                     else _num(held.get("accuracy")),
                     Estimate(**length["shorter_wins"]).percent() if length.get("shorter_wins") else "-",
                     _num(held.get("ece")), _num(length.get("reward_length_correlation"))])
        if held.get("calibration"):
            calibration[f"round {k}"] = held["calibration"]
        section = metrics.get("reliability") or {}
        sources = {name: e for name, e in section.get("sources", {}).items() if e.get("decision") != "no human labels"}
        if sources or section.get("warnings") or section.get("unmeasured"):
            reliability.append((k, section, sources))
    if not rows:
        return parts + ["<p class=note>No reward model yet.</p>"]
    parts.append(_table(["round", "train pairs", "first loss", "last loss", "held-out pairs", "held-out accuracy",
                         "prefer the shorter reply (baseline)", "ECE", "reward-length r"], rows))
    rate = lambda e: _interval({key: e[key] for key in ("value", "low", "high", "n")}) if e and \
        e.get("value") is not None else "-"
    for k, section, sources in reliability:
        labelers = []
        for name, e in sources.items():
            test, length, best = e.get("sign_test"), e.get("against_length"), e.get("baseline")
            labelers.append([
                name, str(e["pairs"]), rate(e.get("agreement")), f"{best['name']}\n{rate(best)}" if best else "-",
                f"{test['p_value']:.3g}\n({test['for']} of {test['discordant']})" if test else "-",
                ("none: vacuous" if length["vacuous"] else f"{rate(length)}\nof {length['n']}") if length else "-",
                _num(e.get("slope")),
                "\n".join(f"{e['weight_given'][file]:g} → {used:g}" for file, used in e["weight_used"].items()),
                e["decision"]])
        if sources or section.get("warnings"):
            parts.append(f"<h3>Round {k}: AI labelers against people (reliability: {_e(section['mode'])}; at least "
                         f"{_e(section.get('min_pairs', '?'))} measured pairs needed)</h3>")
        else:
            parts.append(f"<h3>Round {k}: AI labels not measured against people</h3>")
        if labelers:
            parts.append(_table(["labeler", "pairs measured", "agreement", "best baseline",
                                 "sign test p (its way, of pairs that differ)", "agreement where length is wrong",
                                 "slope", "weight given → used", "decision"], labelers))
        notes = section.get("warnings", []) + ([section["unmeasured"]] if section.get("unmeasured") else [])
        if notes:
            parts.append("<ul class=note>" + "".join(f"<li>{_e(w)}</li>" for w in notes) + "</ul>")
    if calibration:
        parts.append(_figure("reward-calibration", "Calibration on held-out pairs: sigmoid(reward margin) against how "
                             "often the reward model picks the label's winner", _plot_calibration(calibration)))
    else:
        parts.append("<p class=note>No held-out pairs, so no calibration plot: set the reward stage's "
                     "<code>eval_fraction</code> or <code>eval_data</code>.</p>")
    return parts


def _human_data(run: Path, rounds: list[int]) -> list[str]:
    """People's labels, as each round's reward stage read them (round-K/reward/metrics.json) and as the labeler
    check read them (labeler-check/labeler_report.json), from their `human_agreement` (rlaif.agreement): how many
    human rows and annotators, people's agreement with each other (percent agreement, Cohen's kappa, Krippendorff's
    alpha, with intervals), and each principle of each AI labeler against people's majority beside the length
    baselines on the same pairs. Nothing for runs with no human rows."""
    from rlaif.agreement import HUMAN_AI_COLUMNS, human_ai_rows, shown_chance, shown_estimate

    found = []
    for k in rounds:
        agreement = (_json(run / f"round-{k}" / "reward" / "metrics.json") or {}).get("human_agreement")
        if agreement and agreement["rows"]["human"]:
            found.append((f"round {k}, reward model's data", agreement))
    check = (_json(run / "labeler-check" / "labeler_report.json") or {}).get("human_agreement")
    if check and check["rows"]["human"]:
        found.append(("labeler check's pairs", check))
    if not found:
        return []
    parts = ["<h2>Human data</h2>",
             ("<p>People's agreement with each other, where two or more answered the same pair, is the ceiling an AI "
              "labeler or a reward model can reach. Percent agreement: how often two people's answers to a pair agree. "
              "Kappa (two annotators) and alpha (any number, missing answers allowed) correct it for chance: 1 is full "
              "agreement, 0 what chance gives; Krippendorff takes alpha of at least 0.8 as reliable and 0.667 as the "
              "lowest for tentative conclusions (docs/humans.md, \"Agreement\"). Each principle's agreement with "
              "people's majority stands beside the length baselines on the same pairs.</p>")]
    people = []
    for name, agreement in found:
        inter = agreement.get("inter_annotator") or {}
        people.append([name, str(agreement["rows"]["human"]), str(agreement["annotators"]),
                       str(agreement["human_pairs"]), str(inter.get("pairs", 0)),
                       shown_estimate(inter.get("percent_agreement"), percent=True), shown_chance(inter, "kappa"),
                       shown_chance(inter, "alpha")])
    parts.append(_table(["data", "human rows", "annotators", "pairs people labelled", "pairs two or more answered",
                         "percent agreement", "Cohen's kappa", "Krippendorff's alpha"], people))
    for name, agreement in found:
        rows = human_ai_rows(agreement)
        if rows:
            parts.append(f"<h3>{_e(name)}: each principle against people's majority</h3>")
            parts.append(_table(HUMAN_AI_COLUMNS, rows))
        left = {f"{part}: {key}": n for part, counts in agreement.get("left_out", {}).items()
                for key, n in counts.items() if n}
        notes = agreement.get("notes", []) + ([f"{name}, left out: " + ", ".join(f"{key} {n}" for key, n in
                                                                                 left.items())] if left else [])
        if notes:
            parts.append("<ul class=note>" + "".join(f"<li>{_e(note)}</li>" for note in notes) + "</ul>")
    parts.append(f"<p class=note>{_e(found[0][1]['method'])}.</p>")
    return parts


def _labeler(run: Path, rounds: list[int]) -> list[str]:
    parts = ["<h2>AI labeler</h2>"]
    summaries = {}
    for k in rounds:
        path = run / f"round-{k}" / "label" / "preferences.jsonl"
        if path.is_file():
            summary = labeler_summary(list(read_jsonl(path)))
            if summary["pairs"]:
                summaries[f"round {k}"] = summary
    if not summaries:
        return parts + ["<p class=note>No AI labels yet.</p>"]
    parts.append("<p>Consistent: both orders of the pair name the same winner (over the labels scored in both "
                 "orders). Confidence: mean max(p, 1 - p) of the soft label.</p>")
    parts.append(_table(["round", "pairs", "consistent", "mean confidence", "low confidence"],
                        [[name, str(s["pairs"])] + [_interval(s["intervals"][key]) if s["intervals"][key]
                                                    else _num(s[key]) for key in
                                                    ("consistency", "confidence", "low_confidence")]
                         for name, s in summaries.items()]))
    parts.append(_figure("labeler-consistency", "Soft labels P(chosen better), and consistency per round",
                         _plot_labels(summaries)))
    principles: dict[str, dict] = {}
    for s in summaries.values():
        for pid, stats in s["per_principle"].items():
            mine = principles.setdefault(pid, {"pairs": 0, "both_orders": 0, "consistent": 0.0, "confidence": 0.0})
            mine["pairs"] += stats["pairs"]
            mine["both_orders"] += stats["both_orders"]
            mine["consistent"] += stats["consistency"] * stats["both_orders"] if stats["both_orders"] else 0.0
            mine["confidence"] += stats["confidence"] * stats["pairs"]
    table = {pid: {"pairs": m["pairs"],
                   "consistency": m["consistent"] / m["both_orders"] if m["both_orders"] else float("nan"),
                   "confidence": m["confidence"] / m["pairs"]} for pid, m in sorted(principles.items())}
    parts.append(_figure("labeler-principles", "Per principle, all rounds: pairs labeled, and the consistency of "
                         "the labels it took part in", _plot_principles(table)))
    return parts


def _samples(run: Path, evaluation: dict | None, limit: int = 8) -> list[str]:
    parts = ["<h2>Same prompts, three policies</h2>"]
    path = run / "eval" / "responses.jsonl"
    if not evaluation or not path.is_file():
        return parts + ["<p class=note>Not evaluated yet.</p>"]
    names = list(evaluation["policies"])
    shown = [n for n in ("base", "sft", names[-1]) if n in names]
    shown = list(dict.fromkeys(shown))
    responses = {(r["policy"], r["prompt_id"]): r for r in read_jsonl(path)}
    prompt_ids = list(dict.fromkeys(pid for _, pid in responses))[:limit]
    rows = []
    for pid in prompt_ids:
        first = responses.get((shown[0], pid))
        if first is None:
            continue
        prompt = first["prompt"][-1]["content"]
        cells = [f"{prompt}\n[{', '.join(first['tags'])}]"]
        for name in shown:
            r = responses.get((name, pid))
            cells.append(f"{r['response']}\n(reward {r['reward']:.2f})" if r else "")
        rows.append(cells)
    return parts + [_table(["prompt"] + shown, rows, text=True)]


# --------------------------------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot_ppo(series: list[tuple[int, list[dict]]]) -> str:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(PPO_CURVES), figsize=(3.2 * len(PPO_CURVES), 2.6))
    for ax, (key, title) in zip(axes, PPO_CURVES):
        offset = 0
        for k, rows in series:
            logged = [r for r in rows if r.get(key) is not None]
            ax.plot([offset + r["step"] for r in logged], [r[key] for r in logged],
                    marker="." if len(rows) < 30 else None, color="C0")
            if offset:
                ax.axvline(offset + 0.5, color="grey", linestyle=":")
            offset += max((r["step"] for r in rows), default=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
    fig.tight_layout()
    return _png(fig)


def _plot_win_rates(results: dict) -> str:
    plt = _pyplot()
    groups = list(results)
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 2.8), squeeze=False)
    for ax, group in zip(axes[0], groups):
        names = [n for n in results[group] if n != "base"]
        for i, (key, label) in enumerate([("rm_win_vs_base", "reward model"), ("judge_win_vs_base", "AI judge")]):
            values = [results[group][n].get(key, math.nan) for n in names]
            intervals = [results[group][n].get("intervals", {}).get(key) for n in names]
            errors = [[v - ci["low"] if ci else 0 for v, ci in zip(values, intervals)],
                      [ci["high"] - v if ci else 0 for v, ci in zip(values, intervals)]]
            ax.bar([x + 0.38 * i for x in range(len(names))], values, width=0.36, label=label, yerr=errors, capsize=3)
        ax.axhline(0.5, color="grey", linestyle=":")
        ax.set_xticks([x + 0.19 for x in range(len(names))], names, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{group}: win rate vs base", fontsize=10)
        ax.tick_params(labelsize=8)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _plot_calibration(calibration: dict[str, list[dict]]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.plot([0.5, 1], [0.5, 1], color="grey", linestyle=":", label="calibrated")
    for name, bins in calibration.items():
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=name)
    ax.set_xlabel("confidence", fontsize=9)
    ax.set_ylabel("accuracy", fontsize=9)
    ax.set_xlim(0.5, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _plot_labels(summaries: dict[str, dict]) -> str:
    plt = _pyplot()
    fig, (hist, bars) = plt.subplots(1, 2, figsize=(8, 2.8))
    for name, s in summaries.items():
        hist.hist(s["p_chosen"], bins=20, range=(0.5, 1), alpha=0.6, label=name)
    hist.set_xlabel("P(chosen better)", fontsize=9)
    hist.set_title("soft labels", fontsize=10)
    hist.legend(fontsize=8)
    names = list(summaries)
    bars.bar(names, [summaries[n]["consistency"] for n in names])
    bars.set_ylim(0, 1)
    bars.set_title("consistent across orders", fontsize=10)
    for ax in (hist, bars):
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _png(fig)


def _plot_principles(table: dict[str, dict]) -> str:
    plt = _pyplot()
    names = list(table)
    fig, (count, consistency) = plt.subplots(1, 2, figsize=(9, 0.3 * len(names) + 1.2), sharey=True)
    count.barh(names, [table[n]["pairs"] for n in names])
    count.set_title("pairs labeled", fontsize=10)
    consistency.barh(names, [table[n]["consistency"] for n in names], color="C1")
    consistency.set_xlim(0, 1)
    consistency.set_title("consistent across orders", fontsize=10)
    for ax in (count, consistency):
        ax.tick_params(labelsize=8)
    count.invert_yaxis()
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------------------------------------------------
# HTML


def _e(text: str) -> str:
    return html.escape(str(text))


def _num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _interval(value) -> str:
    """A rate with its interval, '46.2% [39.1, 53.0]', from a {"value", "low", "high", "n"} dict; a bare number
    (a report written before intervals) as _num; '-' for None."""
    return Estimate(**value).percent() if isinstance(value, dict) else _num(value)


def _table(header: list[str], rows: list[list[str]], text: bool = False, section: int | None = None) -> str:
    """An HTML table, every cell escaped; `section`: the row that starts a second section, ruled off above."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(("<tr class=section>" if r == section else "<tr>") +
                   "".join(f"<td class={'text' if text else ('num' if i else '')}>{_e(c)}</td>"
                           for i, c in enumerate(row)) + "</tr>" for r, row in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(ident: str, caption: str, png: str) -> str:
    return (f"<figure id={ident}><img alt='{_e(caption)}' src='data:image/png;base64,{png}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _json(path: Path) -> dict | None:
    return json.loads(read_text(path)) if path.is_file() else None
