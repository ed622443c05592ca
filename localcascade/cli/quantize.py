"""`localcascade quantize`: not yet written."""
