"""Search over compression settings and architectures (Optuna studies)."""
