"""SessionService: conversations as append-only event logs with state."""
