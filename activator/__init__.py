"""The activator: every KO version on a shelf as an HTTP service (KGrid routes and OIP v2)."""

from activator.app import create_app
from activator.settings import Settings

__all__ = ["Settings", "create_app"]
