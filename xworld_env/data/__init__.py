"""Training data from the teacher simulator.

``generate`` (``xworld generate``) writes shards, ``shards`` defines their format and the
train/val split, ``dataset`` reads them as a torch ``Dataset``, and ``scenario_bank``
(``xworld scenario-bank``) cuts the env's starts from the validation episodes. The submodules
are imported where used, so reading shards does not import the simulator and generating does
not import torch.
"""
