"""H2 training (``camstat train-reg``, SPEC 5).

- :mod:`~camstat.training.config` -- options, their validation, loss weights, lambda schedules;
- :mod:`~camstat.training.plan` -- the options resolved once against data, model and means;
- :mod:`~camstat.training.losses` -- differentiable CAMs and the CAM terms (pure torch);
- :mod:`~camstat.training.means` -- class means of a baseline's train-split store;
- :mod:`~camstat.training.evaluate` -- held-out predictions, maps and their consistency;
- :mod:`~camstat.training.rundir` -- the run directory: lock, resume decision, files, RNG state;
- :mod:`~camstat.training.dist` -- the torchrun process group;
- :mod:`~camstat.training.train` -- the loop (:func:`~camstat.training.train.train`).
"""
