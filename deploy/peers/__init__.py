"""Real HTTP servers playing the external systems we cannot run: the central document hub and a
public-service portal. Used by the tests and by ``lienthong demo``."""
