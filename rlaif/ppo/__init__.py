"""PPO with a KL penalty to a frozen reference: pure math in losses.py, the loop in trainer.py."""
