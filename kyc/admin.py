"""Admin registrations for KYC/AML models (none yet)."""
