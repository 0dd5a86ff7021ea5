"""The activator's route families, one module each; :mod:`activator.app` assembles them.

- :mod:`.kgrid`: the KGrid 1.x and 2.0 routes (list, read and call KOs);
- :mod:`.oip`: the Open Inference Protocol v2 (Triton, KServe, MLServer clients);
- :mod:`.cds_hooks`: CDS Hooks 2.0 services over FHIR, with its JWT checks in :mod:`activator.cds_auth`;
- :mod:`.publishing`: POST /kos, lifecycle status and /admin/reload, behind role tokens;
- :mod:`.service`: links, health, readiness, metrics and the combined OpenAPI.

Route modules never import each other or :mod:`activator.app`: what several need (which version a
request names, lifecycle headers) lives below them in :mod:`activator.versions`.
"""
