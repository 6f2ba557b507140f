"""The reward model: the soft Bradley-Terry loss by hand and against TRL's, weights, metrics, scoring, and a training
run on the tiny model that learns a separable preference."""

from __future__ import annotations

import json
import math
import random
from functools import partial

import pytest
import torch

from rlaif.rankings import pair_key
from rlaif.reward import (
    RewardConfig,
    RewardModel,
    _trainer_classes,
    load_backbone,
    pair_metrics,
    pearson,
    run,
    soft_bradley_terry_loss,
    split,
)


def test_soft_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 0.5])
    p = torch.tensor([0.75, 0.5, 1.0])
    log_sig = lambda x: math.log(1 / (1 + math.exp(-x)))
    expected = [-(0.75 * log_sig(1) + 0.25 * log_sig(-1)), -log_sig(0), -log_sig(1.5)]
    assert soft_bradley_terry_loss(chosen, rejected, p).tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[0] == pytest.approx(0.563262, abs=1e-6)  # 0.75 * 0.313262 + 0.25 * 1.313262
    # A margin m asks for r_c - r_r > m toward the labelled side (p = 1: TRL's margin loss).
    margin = soft_bradley_terry_loss(chosen, rejected, p, torch.tensor([0.5, 0.5, 0.5]))
    assert margin[2].item() == pytest.approx(-log_sig(1.0), abs=1e-6)
    assert margin[1].item() == pytest.approx(-log_sig(-0.5), abs=1e-6)
    # Flipping the pair and the label gives the same loss.
    assert soft_bradley_terry_loss(rejected, chosen, 1 - p).tolist() == pytest.approx(expected, abs=1e-6)


@pytest.fixture(scope="module")
def seqcls(tiny_model_dir):
    return load_backbone(str(tiny_model_dir), "cpu")


def trainer_pair(tmp_path, model, tokenizer, rows):
    """TRL's own RewardTrainer and ours on the same model and rows."""
    from datasets import Dataset
    from trl import RewardConfig as TRLConfig
    from trl import RewardTrainer

    args = TRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", disable_dropout=True)
    ours_cls, collator_cls = _trainer_classes()
    theirs = RewardTrainer(model=model, args=args, processing_class=tokenizer,
                           train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected", "margin")}
                                                            for r in rows]))
    ours = ours_cls(model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                    data_collator=collator_cls(pad_token_id=tokenizer.pad_token_id))
    return theirs, ours


def pref(prompt, chosen, rejected, p=1.0, weight=1.0, margin=0.0):
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": p, "weight": weight,
            "margin": margin}


def test_loss_equals_trls_at_p_1_and_weights_scale_rows(tmp_path, seqcls):
    model, tokenizer = seqcls
    rows = [pref("How do I bake bread?", "Mix flour and water.", "No.", margin=0.3),
            pref("Which is better?", "The answer is (A).", "I can't help with that, but here is a safer way.")]
    theirs, ours = trainer_pair(tmp_path, model, tokenizer, rows)
    batch_theirs = theirs.data_collator([theirs.train_dataset[i] for i in range(2)])
    batch_ours = ours.data_collator([ours.train_dataset[i] for i in range(2)])
    model.eval()
    with torch.no_grad():
        loss_theirs = theirs.compute_loss(model, dict(batch_theirs))
        loss_ours = ours.compute_loss(model, dict(batch_ours))
        assert loss_ours.item() == pytest.approx(loss_theirs.item(), abs=1e-6)

        # Per-row weights: weights (2, 0) give twice the first row's loss, halved by the batch mean.
        single = ours.compute_loss(model, dict(ours.data_collator([ours.train_dataset[0]])))
        batch_ours["weight"] = torch.tensor([2.0, 0.0])
        assert ours.compute_loss(model, dict(batch_ours)).item() == pytest.approx(single.item(), abs=1e-6)


def test_pair_metrics_and_pearson():
    # Labels facing chosen; deltas: right, right, wrong; the 0.5 label is left out of accuracy.
    metrics = pair_metrics([2.0, 0.5, -1.0, 3.0], [1.0, 0.8, 1.0, 0.5])
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["mean_margin"] == pytest.approx(0.5)
    interval = metrics["accuracy_interval"]  # over the 3 decided pairs, a tied reward counting half
    assert interval["n"] == 3 and interval["value"] == pytest.approx(2 / 3) and interval["low"] <= 2 / 3 <= interval["high"]
    assert pair_metrics([1.0, 0.0], [1.0, 1.0])["accuracy_interval"]["value"] == pytest.approx(0.75)
    assert 0 <= metrics["ece_floor"] <= 1
    # A label facing `rejected` (p < 0.5) counts the other way.
    assert pair_metrics([-2.0], [0.1])["accuracy"] == 1.0
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None


def test_scoring_is_batch_invariant_and_normalizes(seqcls):
    model, tokenizer = seqcls
    scorer = RewardModel(model.eval(), tokenizer, stats={"mean": 1.0, "std": 2.0})
    prompts = ["How do I bake bread?", [{"role": "user", "content": "Hi"}], "Which is better?"]
    responses = ["Mix flour, water, salt and yeast, then let it rise.", "Hello!", "The answer is (A)."]
    together = scorer.score(prompts, responses, batch_size=3)
    alone = torch.cat([scorer.score([p], [r]) for p, r in zip(prompts, responses)])
    assert together.shape == (3,) and torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(scorer.score(prompts, responses, normalize=True), (together - 1.0) / 2.0, atol=1e-5)
    with pytest.raises(ValueError, match="3 prompts for 2 responses"):
        scorer.score(prompts, responses[:2])


def test_split_is_stable_and_by_pair():
    rows = [pref(f"q{i}", "a", "b") for i in range(200)]
    train, held = split(rows, 0.25)
    assert len(train) + len(held) == 200 and 30 < len(held) < 70
    assert split(rows, 0.25)[1] == held
    flipped = [pref(r["prompt"][0]["content"], "b", "a") for r in rows]  # the same pairs, other way round
    assert [r["prompt"] for r in split(flipped, 0.25)[1]] == [r["prompt"] for r in held]


GOOD = ["Mix flour, water, salt and yeast, then let it rise.", "Here is a safer way to think about it.",
        "The assistant answers questions about cooking and travel.", "Python functions, loops and lists."]
BAD = ["Critique: it is rude and gives dangerous advice.", "rude dangerous rude dangerous advice",
       "It is rude. It is rude. It is rude.", "dangerous advice, rude reply"]


def separable_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good, bad = rng.choice(GOOD), rng.choice(BAD)
        chosen, rejected = (good, bad)
        row = pref(f"Question {i}: how do I bake bread?", chosen, rejected)
        row.update(id=f"s{i}", source="ai" if i % 2 else "human", p_chosen=0.9 if i % 2 else 1.0)
        row.pop("margin")
        row.pop("weight")
        rows.append(row)
    return rows


def test_training_learns_a_separable_preference(tmp_path, tiny_model_dir):
    rows = separable_pairs(96, seed=0)
    ai = tmp_path / "ai.jsonl"
    human = tmp_path / "human.jsonl"
    ai.write_text("".join(json.dumps(r) + "\n" for r in rows if r["source"] == "ai"))
    human.write_text("".join(json.dumps(r) + "\n" for r in rows if r["source"] == "human"))
    # People labelled other pairs than the AI, so nothing measures the AI labeler: under reliability weight its
    # labels would get weight 0 (tests/test_mixing.py); warn keeps them, uncalibrated, to train on the mix.
    config = RewardConfig(data=[str(ai), f"{human}:2"], out=str(tmp_path / "rm"), model=str(tiny_model_dir),
                          eval_fraction=0.25, learning_rate=3e-3, epochs=3, batch_size=8, save_steps=1000,
                          device="cpu", stats_samples=32, reliability="warn")
    metrics = run(config, progress=False)
    entry = metrics["reliability"]["sources"][str(ai)]  # rows that name no labeler: their file's
    assert entry["pairs"] == 0 and entry["decision"] == "too few pairs" and entry["weight_used"] == {str(ai): 1.0}
    assert metrics["train"]["last_loss"] < metrics["train"]["first_loss"]
    # people's agreement (rlaif.agreement) beside the reliability: people on every row, the AI on the training side
    people = metrics["human_agreement"]
    assert people["rows"]["human"] + people["rows"]["ai"] == 96
    assert 0 < people["left_out"]["reward_stage"]["held_out_rows"] < 96 and people["inter_annotator"] is None
    assert any("no row names its annotator" in note for note in people["notes"])
    held = metrics["heldout"]
    assert held["overall"]["pairs"] == held["human"]["pairs"] + held["ai"]["pairs"]
    assert held["overall"]["accuracy"] >= 0.9, held
    assert held["human"]["accuracy"] >= 0.9 and held["ai"]["accuracy"] >= 0.9
    assert -1.0 <= held["length"]["reward_length_correlation"] <= 1.0
    # the baseline beside the accuracy: prefer the shorter reply, on the same pairs (a tie half, as the longer rule)
    shorter = held["length"]["shorter_wins"]
    assert shorter["value"] == pytest.approx(1 - held["length"]["longer_wins_accuracy"])
    assert shorter["n"] == held["overall"]["pairs"] and shorter["low"] <= shorter["value"] <= shorter["high"]
    stats = json.loads((tmp_path / "rm" / "reward_stats.json").read_text())
    assert stats["responses"] == 64 and stats["std"] > 0

    scorer = RewardModel.load(tmp_path / "rm", device="cpu")
    good, bad = scorer.score(["Question 999: how do I bake bread?"] * 2, [GOOD[0], BAD[0]], normalize=True)
    assert good > bad
    # A finished stage is not trained again.
    assert run(config, progress=False) == json.loads((tmp_path / "rm" / "metrics.json").read_text())


def test_human_agreement_measures_people_on_every_pair_and_the_ai_on_the_training_side_fair_pairs():
    from rlaif.reward import held_out_key, human_agreement

    def row(i, who, chosen="A careful, complete answer.", rejected="No."):
        out = pref(f"Question {i}?", chosen, rejected)
        out.update(id=f"{i}-{who}", source="human", annotator=who)
        return out

    # pairs 0-39: ana and ben choose the longer reply, cy the shorter on 0-3; pairs 40-45: only dee, in the
    # calibration file; the AI labelled all 46, its harm principle for the longer reply, help for the shorter
    people = [row(i, who) for i in range(40) for who in ("ana", "ben")]
    people += [row(i, "cy", "No.", "A careful, complete answer.") for i in range(4)]
    ai = [{**pref(f"Question {i}?", "A careful, complete answer.", "No.", p=0.8), "id": f"ai{i}", "source": "ai",
           "principle_p": {"harm": 0.8, "help": 0.3}} for i in range(46)]
    calibration = [row(i, "dee") for i in range(40, 46)]
    held = partial(held_out_key, fraction=0.25)
    report = human_agreement([("human.jsonl", people, 1.0), ("ai.jsonl", ai, 1.0)], [("check.jsonl", calibration)],
                             held)
    kept = [i for i in range(46) if not held(pair_key(row(i, "x")))]
    assert 5 < len(kept) < 46
    held_rows = sum(3 + (i < 4) if i < 40 else 2 for i in range(46) if i not in kept)  # as reliability leaves them
    assert report["left_out"]["reward_stage"]["held_out_rows"] == held_rows
    inter = report["inter_annotator"]  # every pair, held out or not; dee, read only to measure, not among them
    assert inter["pairs"] == 40 and report["annotators"] == 3
    (name,) = report["human_ai"]
    assert name == "ai.jsonl"  # rows that name no labeler: their file's, as rlaif.reliability names them
    entry = report["human_ai"][name]
    assert entry["pairs"] == len(kept)  # dee's pairs measured too
    assert entry["principles"]["harm"]["agreement"]["value"] == 1.0
    assert entry["principles"]["help"]["agreement"]["value"] == 0.0
    # pairs people answered because the labeler doubted them (rankings export's `why`) do not measure it
    doubted = [{**r, "why": "uncertain"} if int(r["id"].split("-")[0]) < 20 else r for r in people]
    report = human_agreement([("human.jsonl", doubted, 1.0), ("ai.jsonl", ai, 1.0)], [("check.jsonl", calibration)],
                             held)
    assert report["human_ai"][name]["pairs"] == sum(i >= 20 for i in kept)
    assert report["left_out"]["reward_stage"]["chosen_for_doubt_rows"] == sum(2 + (i < 4) for i in kept if i < 20)
    assert report["inter_annotator"]["pairs"] == 40  # people with each other: every pair still


def test_lora_and_cli(tmp_path, tiny_model_dir):
    from click.testing import CliRunner

    from rlaif.cli import cli

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in separable_pairs(24, seed=1)))
    result = CliRunner().invoke(cli, ["reward", "--data", f"{data}:1.5", "--model", str(tiny_model_dir),
                                      "--out", str(tmp_path / "rm"), "--lora", "--max-steps", "3",
                                      "--batch-size", "4", "--eval-fraction", "0.25", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "held-out" in result.output and (tmp_path / "rm" / "model.safetensors").is_file()
    assert RewardModel.load(tmp_path / "rm", device="cpu").score(["Hi"], ["Hello"]).shape == (1,)
    result = CliRunner().invoke(cli, ["reward", "--data", str(tmp_path / "missing.jsonl"), "--model",
                                      str(tiny_model_dir), "--out", str(tmp_path / "rm2")])
    assert result.exit_code == 1 and "missing.jsonl: file not found" in result.output


def test_grouping_by_length_pads_less_and_still_trains_every_pair_once(tmp_path, tiny_model_dir, monkeypatch):
    from rlaif import reward

    rng = random.Random(3)
    rows = [pref("word " * rng.choice([2, 5, 40, 120, 300]) + f"question {i}?", GOOD[i % 4], BAD[i % 4])
            for i in range(64)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = {}
    classes = reward._trainer_classes

    def counting_classes():
        trainer_cls, collator_cls = classes()

        class Counting(collator_cls):
            def torch_call(self, examples):
                batch = super().torch_call(examples)
                tally = seen.setdefault(grouped, {"pads": 0, "pairs": []})
                tally["pads"] += int((batch["attention_mask"] == 0).sum())
                tally["pairs"] += [tuple(e["chosen_ids"]) for e in examples]
                return batch

        return trainer_cls, Counting

    monkeypatch.setattr(reward, "_trainer_classes", counting_classes)
    for grouped in (False, True):
        run(RewardConfig(data=[str(data)], out=str(tmp_path / f"rm-{grouped}"), model=str(tiny_model_dir),
                         eval_fraction=0.0, batch_size=8, group_by_length=grouped, save_steps=1000, device="cpu",
                         stats_samples=2), progress=False)
    assert seen[True]["pads"] < seen[False]["pads"] / 2, seen  # lengths 2..300 words: shuffled batches pad a lot
    assert sorted(seen[True]["pairs"]) == sorted(seen[False]["pairs"])  # one epoch: each pair once, either way
    assert len(set(seen[True]["pairs"])) == 64


def test_length_grouped_order_is_drawn_from_the_seed_and_epoch_alone(tmp_path, tiny_model_dir):
    from rlaif.reward import length_sampler_class

    Sampler = length_sampler_class()
    lengths = [random.Random(i).randint(5, 500) for i in range(200)]

    def order(seed, epoch, disturb=False):
        sampler = Sampler(lengths, 8, seed)
        sampler.set_epoch(epoch)
        if disturb:  # what else a run (or a resumed one) draws from torch's global generator does not matter
            torch.rand(1000)
        return list(sampler)

    assert order(0, 1) == order(0, 1, disturb=True) and sorted(order(0, 1)) == list(range(200))
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    first = order(0, 0)  # batches of similar length: the spread within a batch is small next to the data's
    spread = sum(max(lengths[i] for i in first[k:k + 8]) - min(lengths[i] for i in first[k:k + 8])
                 for k in range(0, 200, 8)) / 25
    assert spread < 100 < max(lengths) - min(lengths)

    # The reward stage's trainer uses it, over the pairs of one optimizer update, with the run's seed.
    from datasets import Dataset
    from trl import RewardConfig as TRLConfig

    model, tokenizer = load_backbone(str(tiny_model_dir), "cpu")
    trainer_cls, collator_cls = _trainer_classes()
    rows = [{**pref(f"Question {i}?", "Yes.", "No."), "length": i} for i in range(4)]
    for strategy in ("group_by_length", "random"):
        args = TRLConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=2,
                         gradient_accumulation_steps=3, seed=7, train_sampling_strategy=strategy,
                         length_column_name="length")
        sampler = trainer_cls(model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                              data_collator=collator_cls(pad_token_id=tokenizer.pad_token_id))._get_train_sampler()
        assert isinstance(sampler, Sampler) == (strategy == "group_by_length")
        if strategy == "group_by_length":
            assert (sampler.seed, sampler.batch_size, sampler.lengths) == (7, 6, [0, 1, 2, 3])
