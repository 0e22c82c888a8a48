"""Operations beside the data path: the watchdog, metrics, the box's own health, logs for journald."""
