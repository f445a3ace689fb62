"""The ``advmim`` command and its run folders: the entry point (``main``), the LightningCLI
(``cli``), which checkpoint a command uses (``resume``), reading checkpoints safely
(``checkpoints``), run folders and their lock (``folders``), ``RunCheckpoint``, loggers, and
every use of a private Lightning API (``lightning_private``)."""
