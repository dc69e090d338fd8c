"""Step skipping: TeaCache (and the caches that follow it)."""
