"""digitserve.trainer: train, evaluate and publish MNIST classifiers into the model repository.

Modules, one concept each:

- ``settings``   the typed settings of ``digitserve-train`` (flags and ``DIGITSERVE_*``)
- ``data``       reading and checking MNIST (IDX, gzipped or plain, or ``mnist.npz``)
- ``models``     the architectures by name, and each one's training recipe per profile
- ``pipeline``   tf.data input pipelines and seeded augmentation
- ``progress``   training progress: rich on a terminal, plain log lines elsewhere
- ``train``      :func:`~digitserve.trainer.train.run`: train, evaluate, gate, publish
- ``export``     the SavedModel with the serving signature, and reading it back
- ``metrics``    accuracy, loss, confusion matrix, per-class precision/recall/F1
- ``gate``       the quality gate applied before publishing
- ``report``     the evaluation report (JSON, PNG plots, HTML)
- ``provenance`` library and code versions recorded with each model
- ``cli``        the ``digitserve-train`` entry point

Importing this package loads nothing heavy; TensorFlow is imported by the modules that need it.
"""
