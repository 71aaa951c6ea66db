"""Training (layer 5 of the package, docs/DESIGN.md): the loop and what it is made of.

* :mod:`dbloss.training.engine`: ``train``, ``train_one_epoch``, ``build``, ``evaluate_checkpoint``;
  it reaches the recipe's method (:mod:`dbloss.methods`) only through the method's hooks;
* :mod:`dbloss.training.schedule`: the optimiser, warm-up and step decays, and their warnings;
* :mod:`dbloss.training.loaders`: devices, samplers and data loaders;
* :mod:`dbloss.training.evaluation`: scores, thresholds, the test record;
* :mod:`dbloss.training.checkpoints`: run folders, reading checkpoints, resuming;
* :mod:`dbloss.training.health`: the checks that keep a run from failing silently;
* :mod:`dbloss.training.tune`: ``dbloss tune`` (Optuna) over the loop.
"""
