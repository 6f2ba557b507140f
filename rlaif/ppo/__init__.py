"""PPO with a KL penalty to a frozen reference: settings in config.py, pure math in losses.py, models and rewards
built in build.py, the loop in trainer.py."""
