"""Lienthong gateway: official documents and dossiers between Vietnam's four levels."""

__version__ = "0.1.0"
