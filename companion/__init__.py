"""companion: the tested PyTorch package behind the book *Meta-Learning and Self-Supervised
Learning, Executable*.

Every chapter imports it; every method in it cites its paper and is tested against an
independent reference. Start with :func:`companion.data.load_dataset` and
:class:`companion.data.EpisodeSampler`.
"""

__version__ = "0.1.0"
