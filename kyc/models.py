"""KYC/AML records. Empty until the KYC issue lands; the app exists so that work has a home."""
