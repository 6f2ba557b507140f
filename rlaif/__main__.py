"""`python -m rlaif ...`, which is also what `accelerate launch -m rlaif ...` runs."""

from rlaif.cli import main

main()
