"""The plain subcommands beside LightningCLI's ``fit`` / ``validate`` / ``test`` / ``predict``.

Each module has a ``main(argv)`` that :mod:`advmim_lightning.run.main` runs for its subcommand:

- :mod:`~advmim_lightning.commands.export`: ``advmim export``, one segmenter as a plain file
  (:func:`~advmim_lightning.commands.export.load_segmenter` reads it back).
- :mod:`~advmim_lightning.commands.compare`: ``advmim compare``, methods x labeled cases x
  seeds; what each combination runs is planned in
  :mod:`~advmim_lightning.commands.compare_plan`, run in
  :mod:`~advmim_lightning.commands.compare_jobs` and tabulated in
  :mod:`~advmim_lightning.commands.compare_report`.
- :mod:`~advmim_lightning.commands.demo`: ``make demo`` (train, test and predict the
  quickstart config).

``advmim prepare`` belongs to the data it writes: :mod:`advmim_lightning.data.prepare`. Each
is dispatched by :func:`advmim_lightning.run.main.main` (``advmim <command>``).
"""
