"""`localcascade models`: not yet written."""
