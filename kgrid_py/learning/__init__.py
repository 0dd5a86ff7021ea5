"""The learning loop's home: capture, outcomes, monitoring, recalibration and federation.

Empty for now; it sits above the core, curation and population, and below the CLI.
"""
