"""Scoring a population: ``kgrid score``'s streaming engine (:mod:`.scoring`) and Spark (:mod:`.spark`).

Both run a core :class:`kgrid_py.KnowledgeObject`'s ``call_batch`` over record batches; the core
never imports this package.
"""
