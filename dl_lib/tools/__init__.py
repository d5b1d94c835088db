"""Console entry points: ``dl_train`` / ``dl_test`` (train_net.py) and ``dl_flops``."""
