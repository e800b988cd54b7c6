"""Training scripts for the small models convlens trains itself (weights and model cards land in models/)."""
