"""`localcascade run`: not yet written."""
