"""Makes ``python -m advmim_lightning`` behave like the ``advmim`` console script."""

from advmim_lightning.run.main import main

if __name__ == "__main__":
    main()
