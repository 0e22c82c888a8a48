"""The ``citygw`` command line: its parser and the commands that are more than a call."""
