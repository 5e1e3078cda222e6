"""vmmctl, bhyvectl's cousin (vmmctl.py): its options and formats (bhyvectl.py), the server's REST client
(client.py) and console client (console.py)."""
from .vmmctl import main

__all__ = ["main"]
