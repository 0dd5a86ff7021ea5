"""Curation: everything a knowledge curator does to a shelf, on top of the core.

Packing and unpacking archives (:mod:`.archive`), signing them (:mod:`.signing`), building and
sealing a KO (:mod:`.build`), scaffolding a new one (:mod:`.scaffold`), the breaking-change rules
(:mod:`.compat`), publishing with its journal and audit log (:mod:`.publish`, :mod:`.audit`),
lifecycle status (:mod:`.lifecycle`), role tokens (:mod:`.tokens`), syncing a remote KGrid
manifest into a cache shelf through the same publishing checks (:mod:`.remote`), and the errors
all of these raise (:mod:`.errors`). The core (``kgrid_py.ko``, ``kgrid_py.shelf``, ...) never
imports this package.
"""
