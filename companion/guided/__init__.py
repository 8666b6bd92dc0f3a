"""Self-supervision guided by a meta-learner (chapter 7), and self-supervision joining
episodic training (chapter 8).

- :mod:`companion.guided.ssl_aux`: a self-supervised auxiliary loss beside any episodic
  learner, with a fixed or a meta-learned weight;
- :mod:`companion.guided.aux_weights`: that weight's hypergradient through one lookahead
  step.
"""

from companion.guided.aux_weights import LogWeight, lookahead_hypergradient
from companion.guided.ssl_aux import WithAuxiliary

__all__ = ["LogWeight", "WithAuxiliary", "lookahead_hypergradient"]
