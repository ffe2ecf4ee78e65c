"""Admin registrations for risk models (none yet)."""
