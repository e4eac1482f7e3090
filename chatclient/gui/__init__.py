"""The PyQt6 desktop client (issue 5; being built)."""
