"""One offline explanation of a decision, for the CLI and the admin API."""
