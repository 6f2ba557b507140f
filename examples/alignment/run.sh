#!/usr/bin/env bash
# The loop's measured effect on the embedded model (docs/alignment.md): SFT on critique-and-revise data, then
# (a) PPO against a reward model trained on human pairs, (b) PPO against one trained on the embedded labeler's
# labels of the same pairs, (c) DPO on the human pairs; every policy judged on held-out prompts by a reward model
# trained on other human pairs. Run it in the folder holding the reward-table split (docs/reward-table.md,
# "Commands": train.jsonl, heldout.jsonl, human_*.jsonl, t_human/, modes/labels.jsonl). Every stage resumes: rerun
# to continue after a stop. About 3 hours on 2 CPU cores.
set -euo pipefail
: "${MODEL:=smollm2-135m-instruct}"  # the policy, the labeler and the reward models' backbone
: "${N_SFT:=64}"                     # training prompts critiqued and revised for SFT
: "${STEPS:=10}"                     # PPO steps (8 prompts each)
: "${N_EVAL:=100}"                   # held-out prompts every policy answers
: "${A:=aln}"                        # where it all goes
mkdir -p "$A"
rm_common="--lora --learning-rate 5e-4 --max-length 512 --epochs 1 --batch-size 8 --eval-data human_heldout.jsonl
           --seed 0 -m $MODEL"

# 1. SFT on one critique-and-revision round of the first N_SFT training prompts (hh pairs 1-200)
head -n "$N_SFT" train.jsonl > "$A/sft_prompts.jsonl"
rlaif critique --prompts "$A/sft_prompts.jsonl" --out "$A/round-1" -m "$MODEL" --rounds 1
rlaif sft --data "$A/round-1/critique/sft.jsonl" --out "$A/round-1/sft" -m "$MODEL" --lora

# 2. The judge: a reward model on other human pairs (hh pairs 351-1000), which no training stage reads
rlaif reward --data human_extra.jsonl $rm_common --out "$A/judge"

# 3. A reward model on the embedded labeler's labels of the 199 training pairs (both orders), measured by nothing
rlaif reward --data modes/labels.jsonl --reliability off $rm_common --out "$A/rm_ai"

# 4. (a) PPO against the human-pair reward model t_human, (b) against the AI-label one, (c) DPO on the human pairs
head -n 24 heldout.jsonl > "$A/monitor_prompts.jsonl"
ppo_common="--policy $A/round-1/sft --prompts train.jsonl --eval-prompts $A/monitor_prompts.jsonl --lora
            --steps $STEPS --batch-size 8 --max-new-tokens 64 --monitor-judge $A/judge"
rlaif ppo $ppo_common --reward-model t_human --out "$A/ppo_human"
rlaif ppo $ppo_common --reward-model "$A/rm_ai" --out "$A/ppo_ai"
rlaif dpo --policy "$A/round-1/sft" --data human_train.jsonl --lora --max-length 512 --out "$A/dpo"

# 5. Base, SFT and the three policies on N_EVAL held-out prompts (hh pairs 201-300), judged by the judge
head -n "$N_EVAL" heldout.jsonl > "$A/eval_prompts.jsonl"
printf 'policies:\n  - %s\n  - %s\n  - %s\n' "$A/ppo_human" "$A/ppo_ai" "$A/dpo" > "$A/eval.yaml"
rlaif eval policies "$A" --config "$A/eval.yaml" --reward-model "$A/judge" --prompts "$A/eval_prompts.jsonl" \
  --labeler "$MODEL" --max-new-tokens 64 --temperature 0.7
python "$(dirname "$0")/table.py" "$A/eval/eval.json"
