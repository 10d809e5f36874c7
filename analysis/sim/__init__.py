"""The embedded default: a seeded GRN-driven screen, a tiny model of each family trained on it, and the CSSI synthetic validation."""
