"""The human-approval stage of a Check."""
