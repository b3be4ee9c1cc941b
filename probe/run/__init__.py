"""The run: config schema, `ovprobe` and its modes (stored, streamed, select), records of what ran."""
