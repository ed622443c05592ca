"""`localcascade ask`: not yet written."""
