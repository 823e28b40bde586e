"""App wiring: settings, the server's lifecycle, the command line."""
