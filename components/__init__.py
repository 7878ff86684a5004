"""Pipeline steps: plain, typed functions over paths and values, plus thin KFP wrappers.

Each step lives in its own module (``components.ingest``, ``components.preprocess``,
``components.class_weights``, ...). The KFP component wrappers in
``components.kfp_components`` only map artifacts to paths and call those functions.
"""
