"""The feature store: extraction of a backbone's tokens per view, store keys, shards and manifests."""
