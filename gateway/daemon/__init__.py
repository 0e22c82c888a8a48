"""The daemon: builds the gateway from its config, supervises its tasks, reloads and rolls back."""
