"""defc's runners: trace passes, staging, normalisation and reconciliation of dumps."""
