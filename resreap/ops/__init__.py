"""Operating resreap: the config file, where decision lines go and how
they look, metrics, systemd notifications, one watch per host, and the
doctor.  Imports the engine and below; only the CLI imports it."""
