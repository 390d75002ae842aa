"""Where problems and traces come from: the Hub, local files, and the built-in generator."""
