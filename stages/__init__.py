"""One module per stage; ``stages.registry`` lists them; ``stages.contract`` is how they run."""
