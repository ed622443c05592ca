"""`localcascade doctor`: not yet written."""
