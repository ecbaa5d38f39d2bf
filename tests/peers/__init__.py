"""Real HTTP servers that play the external systems the gateway talks to."""
