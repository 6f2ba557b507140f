#!/usr/bin/env bash
# The quickstart: one pass of Constitutional AI's supervised stage on the embedded model, on a laptop CPU.
# Each step is one rlaif command; run any of them by hand to explore. `make quickstart` sets up .venv first.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-runs/quickstart}

# 1. Check the constitution before spending compute on it.
rlaif constitution check default

# 2. Critique and revise (SL-CAI): answer each prompt, critique the answer under a principle drawn from the
#    constitution, revise it. Writes $RUN/critique/revisions.jsonl (the traces) and sft.jsonl.
rlaif critique --prompts examples/quickstart/prompts.jsonl --rounds 1 --max-new-tokens 96 --out "$RUN"

# 3. Fine-tune the model on the revisions for a few steps (TRL SFTTrainer, loss on the revised reply only).
rlaif sft --data "$RUN/critique/sft.jsonl" --out "$RUN/sft" --max-steps 4 --batch-size 2 --max-length 384

# 4. Ask the fine-tuned model something.
rlaif generate -m "$RUN/sft" -p "What should I do if I find a wallet on the street?" --max-new-tokens 80
