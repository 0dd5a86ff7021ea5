"""The learning loop: every answer remembered, outcomes linked, performance watched, KOs updated.

- practice to data: :mod:`.store` (the capture database: SQLite or PostgreSQL, numbered
  :mod:`.migrations`), :mod:`.capture` (the library's recorder), :mod:`.records`, :mod:`.ids`
  and :mod:`.subjects` (patients only as HMAC keys under a per-site secret);
- what happened afterwards: :mod:`.outcomes` (files, JSON rows and FHIR bundles, keyed on the way in);
- data to knowledge: :mod:`.monitor` (per version and site), with :mod:`.statistics`,
  :mod:`.survival` and :mod:`.drift`, rendered by :mod:`.report`; :mod:`.cohort` simulates a
  multi-site cohort with a known truth for the tests;
- knowledge back to practice: :mod:`.recalibration`, :mod:`.closed_testing`, :mod:`.graph_update`
  and :mod:`.versioning` turn evidence (:mod:`.evidence`) into a new draft KO version.

It sits above the core, curation and population, and below the CLI (import-linter contracts).
"""
