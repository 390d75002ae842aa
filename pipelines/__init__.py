"""The DAG: recipes, the stage graph and fingerprints, runners and the CLI."""
