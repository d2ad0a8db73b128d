"""Where checkpoints come from: the Hub and its cache, folders, the offline suite, model families."""
