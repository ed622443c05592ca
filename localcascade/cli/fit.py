"""`localcascade fit`: not yet written."""
