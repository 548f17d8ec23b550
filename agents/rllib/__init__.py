"""XWorld-v0 under Ray RLlib (``pip install -e ".[distributed]"``).

- ``config``: ``RLlibTrainConfig`` and the ``PPOConfig`` it builds;
- ``module``: the RLModule (the SB3 agents' seven-view CNN, policy and value heads);
- ``callbacks``: X-Cache and episode metrics through RLlib's metrics logger.

``python -m agents.train_rllib`` trains; ``xworld bench rllib`` measures sampling throughput.
"""
