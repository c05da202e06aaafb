"""The idle-reaper: each cycle discovers every provider's reality, reconciles it with the ledger
(orphans, ghosts), evaluates the policies (TTL, idle, failed or stuck setup, maximum TTL), warns
owners, and tears machines down through the provider, never touching what is not ours."""
