"""Edge targets: profiles (operators, data types, channel alignment, memory), ``edgecompress check`` and the
``hw.adapt`` stage (registered from :mod:`.adapt`, which the registry imports)."""
