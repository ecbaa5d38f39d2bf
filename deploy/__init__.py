"""Deployment files, and peers: real servers that play external systems in tests and the demo."""
