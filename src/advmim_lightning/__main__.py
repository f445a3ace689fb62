"""Makes ``python -m advmim_lightning`` behave like the ``advmim`` console script."""

from advmim_lightning.main import main

if __name__ == "__main__":
    main()
