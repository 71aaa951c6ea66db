"""The applications (layer 6 of the package, docs/DESIGN.md): what the ``dbloss`` sub-commands do,
built on the library, the models, the methods and the training loop below them.

* :mod:`dbloss.apps.predict` and :mod:`dbloss.apps.export`: a trained model on new inputs, ONNX;
* :mod:`dbloss.apps.embed`: frozen-backbone features (``dbloss features``);
* :mod:`dbloss.apps.compare`: recipes x seeds (``dbloss demo``, ``dbloss reproduce``);
* :mod:`dbloss.apps.linear_baseline`: the per-class logistic regression (``dbloss baseline``);
* :mod:`dbloss.apps.report`, :mod:`dbloss.apps.plots`, :mod:`dbloss.apps.analysis`: reports, figures
  and the paper's analyses.
"""
