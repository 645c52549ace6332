"""Manifest intake and the command line. Never imports torch: it starts fast and installs light."""
