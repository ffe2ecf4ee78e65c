"""Risk records. Empty until the risk issue lands; the app exists so that work has a home."""
