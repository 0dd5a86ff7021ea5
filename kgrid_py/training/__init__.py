"""Build-time tools for training the models that knowledge objects ship (not needed to serve)."""
