"""`localcascade bench`: not yet written."""
